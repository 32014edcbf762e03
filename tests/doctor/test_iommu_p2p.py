"""dmabuf.doctor.iommu and .p2p on synthetic variants of the captured roots."""

from __future__ import annotations

import gzip
from pathlib import Path

from dmabuf.doctor import Severity, diagnose
from dmabuf.doctor.p2p import device_role
from dmabuf.pci import Topology

from .helpers import needs_fixtures, root_of, synthetic

pytestmark = needs_fixtures


def _config_without(case: str, name: str, value: str | None) -> str:
    text = gzip.decompress((root_of(case) / "proc/config.gz").read_bytes()).decode()
    lines = [ln for ln in text.splitlines()
             if not ln.startswith((f"CONFIG_{name}=", f"# CONFIG_{name} is not set"))]
    if value is not None:
        lines.append(f"CONFIG_{name}={value}" if value != "n" else f"# CONFIG_{name} is not set")
    return "\n".join(lines) + "\n"


def test_group_types_say_passthrough(tmp_path: Path) -> None:
    root = synthetic(tmp_path, "g_iommu_intel")
    for g in (root / "sys/kernel/iommu_groups").iterdir():
        (g / "type").write_text("identity\n")
    r = diagnose(root)
    st = r.finding("iommu.state")
    assert st.title == "IOMMU active (passthrough)"
    assert st.evidence["basis"] == "every group's default domain is identity"
    (root / "sys/kernel/iommu_groups/3/type").write_text("DMA-FQ\n")
    assert diagnose(root).sections["iommu"]["mode"] == "mixed"


def test_cmdline_passthrough_without_type_files(tmp_path: Path) -> None:
    r = diagnose(synthetic(tmp_path, "g_iommu_intel",
                           cmdline="console=ttyS0 intel_iommu=on iommu=pt\n"))
    assert r.sections["iommu"]["mode"] == "passthrough"
    assert r.sections["iommu"]["basis"] == "iommu=pt on the command line"
    r = diagnose(synthetic(tmp_path / "b", "g_iommu_intel",
                           cmdline="intel_iommu=on iommu.passthrough=0 iommu.strict=1\n"))
    assert r.sections["iommu"]["mode"] == "translated"
    assert "iommu.strict=1" in r.finding("iommu.state").reason


def test_why_off_explanations(tmp_path: Path) -> None:
    r = diagnose(synthetic(tmp_path, cmdline="intel_iommu=off\n"))
    assert r.sections["iommu"]["why_off"] == "intel_iommu=off is on the command line"
    cfg = _config_without("a_switch_intel", "INTEL_IOMMU", "n")
    cfg = cfg.replace("CONFIG_AMD_IOMMU=y", "# CONFIG_AMD_IOMMU is not set")
    cfg += "CONFIG_VFIO=m\nCONFIG_VFIO_PCI=m\n"
    r = diagnose(synthetic(tmp_path / "b", config=cfg))
    st = r.finding("iommu.state")
    assert "no IOMMU hardware driver is built" in st.evidence["why_off"]
    assert st.severity == Severity.WARN and "intel_iommu=on" in (st.remedy or "")
    assert r.capabilities["vfio"]["available"] is None   # VFIO=m, nodes not captured


def test_p2pdma_off_makes_pairs_hypothetical(tmp_path: Path) -> None:
    r = diagnose(synthetic(tmp_path, config=_config_without("a_switch_intel", "PCI_P2PDMA",
                                                            "n")))
    assert r.finding("config.PCI_P2PDMA").severity == Severity.WARN
    en = r.finding("p2p.enabled")
    assert en.severity == Severity.INFO and "hypothetical" in en.title
    ns = r.finding("p2p.not_supported")
    assert ns.severity == Severity.INFO and ns.evidence["hypothetical"] is True
    assert ns.title.startswith("if P2PDMA were on: ")
    assert r.finding("p2p.bus_addr").severity == Severity.INFO
    assert r.capabilities["p2p_pairs"]["available"] is False
    assert any("impossible" in v and "1 of 3 candidate" in v for v in r.verdict)


def test_device_roles_from_class_codes() -> None:
    topo: Topology = diagnose(root_of("a_switch_intel")).topology  # type: ignore[assignment]
    roles = {d.bdf: device_role(d) for d in topo.endpoints()}
    assert roles["0000:03:00.0"] == "nvme" and roles["0000:00:11.0"] is None
    assert roles["0000:00:1f.2"] is None


def test_fallback_selection(tmp_path: Path) -> None:
    root = synthetic(tmp_path, "e_multifunction_intel")
    for cls in (root / "sys/devices").rglob("class"):
        if cls.read_text().strip() == "0x010802":
            cls.write_text("0xffff00\n")
    for pm in list((root / "sys/devices").rglob("p2pmem")):
        for f in pm.iterdir():
            f.unlink()
        pm.rmdir()
    r = diagnose(root)
    p = r.sections["p2p"]
    assert p["selection"] == "all endpoints"
    assert len(p["devices"]) == len(r.topology.endpoints())  # type: ignore[union-attr]
    dv = r.finding("p2p.devices")
    assert "all endpoints" in dv.title and "virtio devices" in dv.reason
    assert not r.has("p2p.p2pmem")
    key = {frozenset((x["provider"], x["client"])): x for x in p["pairs"]}
    assert key[frozenset(("0000:01:00.0", "0000:01:00.1"))]["map_type"] == "BUS_ADDR"


def test_matrix_and_pairs_are_consistent() -> None:
    for case in ("a_switch_intel", "g_iommu_intel", "b_switch_epyc"):
        r = diagnose(root_of(case))
        m = r.matrix
        assert m is not None
        idx = {d.bdf: i for i, d in enumerate(m.devices)}
        n = len(m.devices)
        assert len(r.sections["p2p"]["pairs"]) == n * (n - 1) // 2
        for p in r.sections["p2p"]["pairs"]:
            i, j = idx[p["provider"]], idx[p["client"]]
            assert int(m.distance[i, j]) == int(m.distance[j, i]) == p["distance"]
            assert int(m.map_type[i, j]) == int(m.map_type[j, i])
        counts = r.sections["p2p"]["counts"]
        assert sum(counts.values()) == n * (n - 1) // 2
        allowed = sum(1 for p in r.sections["p2p"]["pairs"] if p["map_type"] != "NOT_SUPPORTED")
        assert r.sections["p2p"]["allowed_pairs"] == allowed


def test_iommu_units_from_sys_class(tmp_path: Path) -> None:
    root = synthetic(tmp_path, "g_iommu_intel")
    (root / "sys/class/iommu").mkdir(parents=True)
    (root / "sys/class/iommu/dmar0").symlink_to("../../devices/virtual/iommu/dmar0")
    r = diagnose(root)
    assert r.sections["iommu"]["units"] == ["dmar0"]
    assert "IOMMU units: dmar0" in r.finding("iommu.state").reason


def test_large_fabric_is_grouped_and_truncated() -> None:
    import numpy as np

    from dmabuf.doctor.p2p import MAX_EVIDENCE_PAIRS, MAX_PAIRS, analyse_p2p, p2p_findings
    from dmabuf.pci import generate_topology

    topo = generate_topology(64, acs_redirect_fraction=0.3, rng=np.random.default_rng(7))
    an = analyse_p2p(topo)
    assert len(an.pairs) == 64 * 63 // 2 > MAX_PAIRS and an.truncated
    assert sum(p.explanation is not None for p in an.pairs) == MAX_PAIRS
    fs, data = p2p_findings(topo, an, "y", "off")
    assert sum(data["counts"].values()) == len(an.pairs) == len(data["pairs"])
    for f in fs:
        if "pairs" in f.evidence:
            assert len(f.evidence["pairs"]) == min(f.evidence["pairs_total"], MAX_EVIDENCE_PAIRS)
    # cause agrees with an independent check for the unexplained pairs too
    for p in an.pairs[MAX_PAIRS:MAX_PAIRS + 200]:
        ex = topo.explain(p.provider, p.client)
        assert ex.map_type == p.map_type and ex.distance == p.distance
        want = ("bus_addr" if p.map_type.name == "BUS_ADDR" else
                "acs_redirect" if ex.common_upstream is not None else
                "thru_host_bridge" if p.map_type.name == "THRU_HOST_BRIDGE" else "not_supported")
        assert p.cause == want
