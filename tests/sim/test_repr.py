"""Mapping representations (``[[import]] repr``): what importers really hold, measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dmabuf.buf.sg_table import SgTable
from dmabuf.mm.ranges import RANGE_DTYPE
from dmabuf.sim.runner import run_scenario
from dmabuf.sim.scenario import load_scenario

from .helpers import cmb_write_scenario, run_toml

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

def _one_entry_sgtable_nbytes() -> int:
    r = np.zeros(1, dtype=RANGE_DTYPE)
    r["addr"], r["len"] = 1 << 30, 4 * MiB
    return SgTable.from_ranges(r).nbytes


@pytest.mark.parametrize("dev, peer, rep, used, nbytes, note", [
    ("nic0", "nic1", "sgtable", "sgtable", None, ""),
    ("nic0", "nic1", "physvec", "physvec", 16, ""),
    # BUS_ADDR through the switch: bus addresses bypass the IOMMU, no IOVA to link
    ("nic0", "nic1", "iova", "physvec", 16, "n/a: BUS_ADDR P2P uses PCI bus addresses"),
    # across root ports through the IOMMU: one IOVA range linked with DMA_ATTR_MMIO
    ("nic1", "nic0", "iova", "iova", 16, ""),
])
def test_p2pmem_user_holds_the_representation_it_maps(dev: str, peer: str, rep: str, used: str,
                                                      nbytes: int | None, note: str) -> None:
    r = run_toml(cmb_write_scenario(dev, peer, mode="pinned", rep=rep), "cmb.toml")
    assert r["ok"] is True and r["bytes_verified"] == 8 * MiB
    a = next(a for a in r["hosts"][0]["attachments"] if a["buffer"] == "cmb")
    assert (a["repr"], a["repr_used"]) == (rep, used)
    assert a["repr_note"].startswith(note) and bool(a["repr_note"]) == bool(note)
    assert a["mapping_bytes"] == (nbytes if nbytes is not None else
                                  _one_entry_sgtable_nbytes())
    assert (a["mapping_entries"], a["mapped_ranges"]) == (1, 1)
    assert a["iommu"] is (dev == "nic1")


def test_dma_buf_importers_keep_the_exporters_sgtable_and_say_why() -> None:
    base = load_scenario(ROOT / "examples" / "small.toml")
    sgt = run_scenario(base)
    from dmabuf.sim.compare import variant

    for rep in ("physvec", "iova"):
        v, _n = variant(base, "dynamic", rep)
        r = run_scenario(v)
        assert r["ok"] is True
        att = {a["buffer"]: a for a in r["hosts"][0]["attachments"]}
        # the proposed mapping-type negotiation was asked for a Physical Address List;
        # neither exporter offers one, so the MRs hold the SgTable the exporters returned
        assert att["act"]["repr_used"] == att["sink"]["repr_used"] == "sgtable"
        assert att["act"]["repr_note"] == (
            "n/a: exporter amdgpu only returns SgTable (no Physical Address List offer in the "
            "mapping-type negotiation)")
        assert att["sink"]["repr_note"].startswith("n/a: exporter system only returns SgTable")
    base_att = {a["buffer"]: a for a in sgt["hosts"][0]["attachments"]}
    assert base_att["act"]["repr_used"] == "sgtable" and base_att["act"]["repr_note"] == ""
    assert base_att["act"]["mapping_bytes"] > 0


GPU_IMPORT = """\
format = 1
seed = 1
[topology]
ram = "1GiB"
[[device]]
name = "gpu0"
kind = "gpu"
vram = "64MiB"
[[device]]
name = "gpu1"
kind = "gpu"
vram = "64MiB"
[[buffer]]
name = "b"
exporter = "gpu0"
size = "4MiB"
[[import]]
buffer = "b"
device = "gpu1"
mode = "dynamic"
repr = "{rep}"
[[stream]]
device = "gpu1"
buffer = "b"
size = "1MiB"
count = 4
"""


@pytest.mark.parametrize("rep", ["sgtable", "physvec"])
def test_generic_importer_mapping_memory_is_the_sgtable_it_holds(rep: str) -> None:
    r = run_toml(GPU_IMPORT.format(rep=rep), "gpu.toml")
    assert r["ok"] is True and r["bytes_verified"] == 4 * MiB
    (a,) = r["hosts"][0]["attachments"]
    # GPU0 -> GPU1 across root ports through the IOMMU: dma_buf_phys_vec_to_sgt linked the
    # VRAM into one IOVA range, one DMA-only entry
    assert (a["map_type"], a["iommu"], a["mapping_entries"]) == ("THRU_HOST_BRIDGE", True, 1)
    assert a["repr_used"] == "sgtable"
    assert a["mapping_bytes"] == _one_entry_sgtable_nbytes()
    assert (a["repr_note"] == "") is (rep == "sgtable")
