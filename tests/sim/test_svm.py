"""HMM importers and SVM buffers in scenarios (dmabuf.sim.svm): real faults, migrations,
invalidations and bytes."""

from __future__ import annotations

import json

import pytest

from dmabuf.sim.report import strip_wall_times, to_json, validate_report
from dmabuf.sim.scenario import ScenarioError, loads_scenario

from .helpers import cmb_write_scenario, gpu_nic_scenario, run_toml

MiB = 1 << 20
PAGES_16M = (16 * MiB) // 4096

SVM = gpu_nic_scenario(name="svm", seed=7, act_mode="hmm", act_repr="iova", direction="read",
                       count=24, concurrency=2, events=(("100us", "evict"), ("400us", "restore")))


@pytest.fixture(scope="module")
def svm_report() -> dict:
    return run_toml(SVM, "svm.toml")


def _att(h: dict, buf: str) -> dict:
    return next(a for a in h["attachments"] if a["buffer"] == buf)


def test_an_odp_mirror_of_gpu_svm_memory_moves_and_verifies_every_byte(svm_report: dict) -> None:
    r = svm_report
    assert r["ok"] is True and r["failures"] == [] and r["missing"] == []
    assert r["bytes_moved"] == r["bytes_verified"] == 24 * MiB
    (h,) = r["hosts"]
    assert h["faults"] == [] and h["warnings"] == []
    a = _att(h, "act")
    assert (a["mode"], a["status"], a["pinned_vram_bytes"]) == ("hmm", "ok", 0)
    # Another device's DEVICE_PRIVATE pages are not reachable: the NIC's fault migrates them
    # to RAM and it maps RAM through its IOMMU — never P2P, whatever the P2P decision says.
    assert a["map_type"] == "HOST_MEMORY (HMM: device-private VRAM migrates to RAM)"
    assert a["p2p_decision"] == "BUS_ADDR" and a["iommu"] is True
    assert a["path"] == ["ram0", "hb0", "sw0", "nic0"]
    # the mirror's hmm_dma_map: 8-byte pfn + 8-byte DMA address per page, a 16-byte IOVA state
    assert (a["repr_used"], a["repr_note"]) == ("iova", "")
    assert (a["mapping_bytes"], a["mapping_entries"]) == (PAGES_16M * 16 + 16, PAGES_16M)
    # it faults on first touch (nothing mapped before), is invalidated by the evict and the
    # restore and by every migration, and re-faults after them
    assert a["maps"] == 1 and a["faults"] >= 16 and a["remaps"] >= 2
    assert a["invalidations"] >= 2 + 8 and a["remap_time"] > 0 and a["invalidate_time"] > 0
    assert a["locations"][-1] == "ram"
    st = h["streams"][0]
    assert (st["status"], st["transfers"], st["bytes_verified"]) == ("ok", 24, 24 * MiB)


def test_svm_migrations_are_timed_copies_and_the_buffer_ends_in_ram(svm_report: dict) -> None:
    (h,) = svm_report["hosts"]
    moves = [(m["from"], m["to"], m["evict"]) for m in h["moves"]]
    # setup: the prefetch into VRAM; the evict event; the restore; the importer's pull-backs
    assert moves[0] == ("RAM", "VRAM", False)
    assert ("VRAM", "RAM", True) in moves
    assert moves.count(("RAM", "VRAM", False)) == 2
    assert sum(m["bytes"] for m in h["moves"] if m["to"] == "VRAM") == 32 * MiB
    # everything that went to VRAM came back (16 MiB left by the evict + 16 MiB of faults)
    assert sum(m["bytes"] for m in h["moves"] if m["to"] == "RAM") == 32 * MiB
    assert all(m["end"] > m["start"] for m in h["moves"])
    ev = {e["action"]: e for e in h["events"]}
    assert ev["evict"]["outcome"] == ev["restore"]["outcome"] == "ok"
    assert "4096 pages migrated as DEVICE_PRIVATE" in ev["restore"]["detail"]
    buf = next(b for b in h["buffers"] if b["name"] == "act")
    assert buf["location"] == "ram" and buf["verified"] and buf["moves"] == len(h["moves"])


def test_svm_report_is_valid_and_reproducible(svm_report: dict) -> None:
    assert validate_report(json.loads(to_json(svm_report))) == []
    again = run_toml(SVM, "svm.toml")
    assert to_json(strip_wall_times(again)) == to_json(strip_wall_times(svm_report))


PRESSURE = SVM.replace('vram = "128MiB"', 'vram = "64MiB"').replace(
    'size = "16MiB"\n[[buffer]]\nname = "sink"', 'size = "32MiB"\n[[buffer]]\nname = "sink"'
).split("[[stream]]")[0] + """\
[[stream]]
name = "tx"
device = "nic0"
buffer = "act"
peer = "nic1"
peer_buffer = "sink"
size = "1MiB"
count = 8
start = "200us"
[[event]]
at = "50us"
action = "pressure"
device = "gpu0"
bytes = "48MiB"
"""


def test_vram_pressure_evicts_the_svm_bo_and_its_worker_migrates_the_range() -> None:
    r = run_toml(PRESSURE, "pressure.toml")
    assert r["ok"] is True
    (h,) = r["hosts"]
    (ev,) = h["events"]
    assert ev["outcome"] == "ok" and "1 BO(s) evicted" in ev["detail"]
    # the 32 MiB svm_bo held VRAM; TTM evicted it, the eviction worker migrated the range
    assert [(m["from"], m["to"], m["evict"], m["bytes"]) for m in h["moves"]] == [
        ("RAM", "VRAM", False, 32 * MiB), ("VRAM", "RAM", True, 32 * MiB)]
    a = _att(h, "act")
    # the stream starts after the eviction: the mirror faults RAM pages, no migration
    assert a["invalidations"] == 1 and a["faults"] == 8 and a["remaps"] == 0
    assert a["locations"] == ["ram"]
    assert h["streams"][0]["bytes_verified"] == 8 * MiB


@pytest.mark.parametrize("dev, peer, map_type, iommu, used", [
    ("nic0", "nic1", "BUS_ADDR", False, "hmm_dma_map"),
    ("nic1", "nic0", "THRU_HOST_BRIDGE", True, "iova")])
def test_hmm_mirror_of_p2pmem_is_peer_to_peer(dev: str, peer: str, map_type: str, iommu: bool,
                                             used: str) -> None:
    r = run_toml(cmb_write_scenario(dev, peer, mode="hmm", rep="iova"), "p2pmem.toml")
    assert r["ok"] is True and r["failures"] == []
    (h,) = r["hosts"]
    a = _att(h, "cmb")
    # P2PDMA pages are visible to hmm_range_fault; hmm_dma_map_pfn maps them by bus address
    # through the switch, or with DMA_ATTR_MMIO through the IOMMU across root ports
    assert (a["map_type"], a["iommu"], a["location"], a["repr_used"]) == (
        map_type, iommu, "cmb", used)
    if used != "iova":
        assert a["repr_note"].startswith("n/a: P2P pages are reached by PCI bus address")
    assert a["faults"] == 4 and a["invalidations"] == 0     # 4 slots, faulted once each
    st = h["streams"][0]
    # each write landed in the CMB through the mirror and was committed to the namespace
    assert (st["status"], st["bytes_verified"]) == ("ok", 8 * MiB)


def _bad(text: str) -> str:
    with pytest.raises(ScenarioError) as ei:
        loads_scenario(text, path="bad.toml")
    return str(ei.value)


ACC = """\
format = 1
[[device]]
name = "acc0"
kind = "accel"
[[device]]
name = "nic0"
kind = "nic"
[[buffer]]
name = "w"
exporter = "acc0"
size = "4MiB"
[[import]]
buffer = "w"
device = "nic0"
mode = "hmm"
"""


def test_validation_refuses_what_hmm_cannot_mirror() -> None:
    msg = _bad(ACC)
    assert "bad.toml:15:" in msg
    assert "cannot be mirrored with HMM" in msg and "habanalabs" in msg
    mixed = SVM.replace('[[stream]]', '[[import]]\nbuffer = "act"\ndevice = "nic1"\n'
                        'mode = "dynamic"\n[[stream]]', 1)
    msg = _bad(mixed)
    assert "process memory is not a dma-buf" in msg and "nic1" in msg
    msg = _bad(SVM.replace('repr = "iova"', 'repr = "iova"\nexpect = "EFAULT"'))
    assert "HMM mirrors fault at the first access" in msg
