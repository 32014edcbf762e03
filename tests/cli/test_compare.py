"""``dmabuf compare``: one workload under each importer mode and mapping representation."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dmabuf.cli import main
from dmabuf.sim.compare import compare, variant
from dmabuf.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "examples" / "small.toml"


def test_variant_switches_only_what_a_device_can_do() -> None:
    s = load_scenario(SMALL)
    v, n = variant(s, "odp", "physvec")
    modes = {(i.buffer, i.device): (i.mode, i.repr) for i in v.hosts[0].imports}
    assert n == 2 and modes == {("act", "nic0"): ("odp", "physvec"),
                                ("sink", "nic1"): ("odp", "physvec")}
    v, n = variant(s, "hmm", "sgtable")
    # NICs mirror process memory with ODP (HMM): both imports switch, the buffers become SVM
    assert n == 2 and {i.mode for i in v.hosts[0].imports} == {"hmm"}


def test_hmm_variant_switches_a_buffer_only_with_all_its_importers() -> None:
    from dmabuf.sim.scenario import load_demo

    s = load_demo()
    v, n = variant(s, "hmm", "iova")
    zen = {(i.buffer, i.device): i.mode for i in v.hosts[0].imports}
    # HBM and a vfio BAR cannot be process memory: those importers keep their mode
    assert zen[("weights", "nic1")] == "pinned" and zen[("doorbells", "nic1")] == "revocable"
    assert zen[("act0", "nic0")] == zen[("cmb", "nic0")] == zen[("sink1", "nic1")] == "hmm"
    assert zen[("svm", "nic0")] == "hmm"
    assert n == 12           # zen: 10 of 12 (not the HBM, not the vfio BAR); broadwell: 2
    v, n = variant(s, "pinned", "sgtable")
    # the demo's SVM buffer and its one importer switch together to a pinned dma-buf MR
    assert {(i.buffer, i.mode) for i in v.hosts[0].imports if i.buffer == "svm"} == {
        ("svm", "pinned")}


def test_compare_rows() -> None:
    rows = compare(load_scenario(SMALL), modes=("pinned", "dynamic", "hmm"),
                   reprs=("sgtable", "iova"))
    by = {(r.mode, r.repr): r for r in rows}
    assert list(by) == [("pinned", "sgtable"), ("pinned", "iova"), ("dynamic", "sgtable"),
                        ("dynamic", "iova"), ("hmm", "sgtable"), ("hmm", "iova")]
    pinned, dynamic = by[("pinned", "sgtable")], by[("dynamic", "sgtable")]
    assert pinned.status == dynamic.status == "ok"
    # a pinned MR keeps its 16 MiB in VRAM and the evict/restore events fail (EBUSY): nothing
    # is invalidated; the dynamic MR lets the buffer move twice and remaps twice
    assert pinned.pinned_vram_bytes == 16 << 20 and pinned.invalidations == 0
    assert pinned.detail.startswith("refused: evict act ([EBUSY]")
    assert dynamic.pinned_vram_bytes == 0 and dynamic.invalidations == 2
    assert dynamic.remaps == 2 and dynamic.remap_cost > 0
    assert pinned.bytes_verified == dynamic.bytes_verified == 24 << 20
    assert pinned.throughput > 0 and dynamic.throughput > 0
    # Every exporter here returns an SgTable: an IOVA range is n/a for dma-buf importers, and
    # the row says so, with what was measured (the SgTables' own nbytes)
    iova = by[("pinned", "iova")]
    assert iova.status == "n/a" and (iova.repr_held, iova.repr_mapped) == (0, 2)
    assert iova.detail.startswith("exporters amdgpu, system only return SgTable")
    assert iova.mapping_bytes == pinned.mapping_bytes > 0
    # HMM: real measured rows. The NIC's ODP mirror pulls the SVM buffer out of GPU0's
    # device-private VRAM on first touch, the evict/restore events invalidate it again.
    hmm = by[("hmm", "iova")]
    assert hmm.status == "ok" and (hmm.repr_held, hmm.repr_mapped) == (2, 2)
    assert hmm.bytes_verified == 24 << 20 and hmm.throughput > 0
    assert hmm.invalidations > dynamic.invalidations and hmm.faults > 0 and hmm.remaps > 0
    assert hmm.remap_cost > 0 and hmm.pinned_vram_bytes == 0
    # an hmm_dma_map per mirror: 8 + 8 bytes per page and a 16-byte IOVA state
    assert hmm.mapping_bytes == 2 * ((16 << 20) // 4096 * 16 + 16)
    assert by[("hmm", "sgtable")].status == "n/a"
    assert "hmm_dma_map" in by[("hmm", "sgtable")].detail


def test_compare_cli_table_and_json() -> None:
    res = CliRunner().invoke(main, ["compare", str(SMALL), "--mode", "dynamic", "--repr",
                                    "sgtable", "--json"], catch_exceptions=False)
    assert res.exit_code == 0
    rows = json.loads(res.stdout)
    assert len(rows) == 1 and rows[0]["mode"] == "dynamic" and rows[0]["status"] == "ok"
    res = CliRunner().invoke(main, ["compare", str(SMALL), "--mode", "pinned", "--repr",
                                    "physvec"], catch_exceptions=False)
    assert res.exit_code == 0
    assert "importer modes × mapping representations" in res.output and "physvec" in res.output
    assert "n/a" in res.output and "SgTable" in res.output
