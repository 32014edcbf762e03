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
    assert n == 0     # NICs have no HMM mirror


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
    # the host-memory sink through the IOMMU: one IOVA range instead of an sg_table
    assert by[("pinned", "iova")].mapping_bytes < pinned.mapping_bytes
    assert by[("hmm", "sgtable")].status == "n/a"


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
