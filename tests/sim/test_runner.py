"""The scenario runner (dmabuf.sim.runner): real bytes, modelled time, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dmabuf.errors import DmaBufError
from dmabuf.sim.report import strip_wall_times, to_json, validate_report
from dmabuf.sim.runner import run_scenario
from dmabuf.sim.scenario import load_scenario, loads_scenario
from dmabuf.sim.verify import BufferTruth, StreamChecksum, fill_bytes, page_digests

from .helpers import gpu_nic_scenario, run_toml

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "examples" / "small.toml"


@pytest.fixture(scope="module")
def small_report() -> dict:
    return run_scenario(load_scenario(SMALL))


def test_small_scenario_moves_and_verifies_every_byte(small_report: dict) -> None:
    r = small_report
    assert r["ok"] is True and r["failures"] == [] and r["missing"] == []
    assert r["bytes_moved"] == r["bytes_verified"] == 24 << 20
    (h,) = r["hosts"]
    (st,) = h["streams"]
    assert (st["transfers"], st["bytes"], st["bytes_verified"], st["status"]) == (
        24, 24 << 20, 24 << 20, "ok")
    assert len(st["crc32"]) == 8 and len(st["flows"]) == 24
    assert all(b > a >= 0 for a, b in st["flows"])
    att = {(a["buffer"], a["device"]): a for a in h["attachments"]}
    act = att[("act", "nic0")]
    # GPU0 and NIC0 sit under one switch with ACS redirect off: BUS_ADDR, distance 4, no IOMMU.
    assert (act["map_type"], act["p2p_decision"], act["distance"], act["iommu"]) == (
        "BUS_ADDR", "BUS_ADDR", 4, False)
    assert act["path"] == ["gpu0.mem", "gpu0", "sw0", "nic0"]
    assert act["pci_path"] == ["gpu0", "dsp0", "sw0", "dsp1", "nic0"]
    # evicted then restored: two invalidations, the NIC re-faulted twice, VRAM -> GTT -> VRAM
    assert act["invalidations"] == 2 and act["remaps"] == 2
    assert act["locations"] == ["vram", "gtt", "vram"]
    sink = att[("sink", "nic1")]
    assert (sink["map_type"], sink["iommu"], sink["pinned"]) == ("HOST_MEMORY", True, True)
    assert [(m["buffer"], m["from"], m["to"]) for m in h["moves"]] == [
        ("act", "VRAM", "TT"), ("act", "TT", "VRAM")]
    assert [e["outcome"] for e in h["events"]] == ["ok", "ok"]
    assert all(b["verified"] and b["status"] == "ok" for b in h["buffers"])
    assert h["faults"] == [] and h["modelled_time"] > 0 and h["setup_time"] > 0


def test_small_report_validates_against_the_schema(small_report: dict) -> None:
    doc = json.loads(to_json(small_report))
    assert validate_report(doc) == []
    broken = json.loads(to_json(small_report))
    broken["hosts"][0]["streams"][0]["transfers"] = "24"
    del broken["hosts"][0]["links"]
    problems = validate_report(broken)
    assert "$.hosts[0].streams[0].transfers: expected integer, got str '24'" in problems
    assert "$.hosts[0]: missing required 'links'" in problems


def test_same_seed_same_report_except_wall_time(small_report: dict) -> None:
    again = run_scenario(load_scenario(SMALL))
    assert to_json(strip_wall_times(again)) == to_json(strip_wall_times(small_report))
    other = run_scenario(load_scenario(SMALL), seed=8)
    assert other["ok"] and other["scenario"]["seed"] == 8
    # a different seed draws different buffer contents
    assert other["hosts"][0]["streams"][0]["crc32"] != small_report["hosts"][0]["streams"][0][
        "crc32"]


def test_link_accounting_matches_the_bytes_moved(small_report: dict) -> None:
    links = {(lk["link"], lk["direction"]): lk for lk in small_report["hosts"][0]["links"]}
    # every stream byte crosses NIC0's port down and NIC1's port up, nothing else does
    assert links[("nic0.port", "down")]["bytes"] == pytest.approx(24 << 20, rel=1e-9)
    assert links[("nic1.port", "up")]["bytes"] == pytest.approx(24 << 20, rel=1e-9)
    for lk in links.values():
        assert 0 <= lk["mean_utilisation"] <= lk["peak_utilisation"] <= 1 + 1e-9


BUGGY = gpu_nic_scenario(seed=1, act_mode="dynamic", size="8MiB", count=16,
                         nic0_params="{ ignore_invalidate = true }", events=(("20us", "evict"),))


def test_an_importer_that_ignores_invalidation_is_caught() -> None:
    r = run_toml(BUGGY, "buggy.toml")
    assert r["ok"] is False
    (h,) = r["hosts"]
    st = h["streams"][0]
    assert st["status"] == "error" and st["transfers"] < 16
    assert any("tx" in f and "RDMA" in f for f in r["failures"])


def test_a_missing_driver_is_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmabuf.sim import scenario as sc

    kinds = dict(sc.KINDS)
    kinds["nic"] = sc.KindInfo("dmabuf.devices.no_such_driver:Nic", (0x02,), (),
                               ("pinned", "dynamic", "odp", "revocable"), ("odp", "gbps"))
    monkeypatch.setattr(sc, "KINDS", kinds)
    import dmabuf.sim.runner as runner

    monkeypatch.setattr(runner, "KINDS", kinds)
    s = load_scenario(SMALL)
    with pytest.raises(DmaBufError, match="needs drivers this installation lacks"):
        run_scenario(s)
    r = run_scenario(s, allow_missing=True)
    assert r["ok"] is True and r["bytes_moved"] == 0
    assert any("nic0" in m and "no_such_driver" in m for m in r["missing"])
    h = r["hosts"][0]
    assert h["streams"][0]["status"] == "missing"
    assert {a["status"] for a in h["attachments"]} == {"missing"}


def test_page_digests_catch_one_changed_word() -> None:
    rng = np.random.default_rng(1)
    data = fill_bytes(rng, 1 << 16, "random")
    t = BufferTruth("b", data)
    assert t.check(0, data) is None
    bad = data.copy()
    bad[12345] ^= 1
    msg = t.check(0, bad)
    assert msg == ("1 of 16 pages of buffer 'b' differ from the expected content, first at "
                   "offset 0x3000")
    t.update(4096, bad[4096:8192])
    assert t.check(4096, bad[4096:8192]) is None and t.writes == 1
    assert page_digests(np.zeros(8192, np.uint8)).tolist() == [0, 0]
    with pytest.raises(DmaBufError):
        page_digests(np.zeros(100, np.uint8))
    pat = fill_bytes(rng, 8192, "pattern").view(np.uint64)
    assert pat[0] == 0 and pat[512] == 1


def test_stream_checksum_is_order_independent_and_does_not_cancel() -> None:
    a, b = StreamChecksum(), StreamChecksum()
    chunks = [np.full(4096, i % 2, np.uint8) for i in range(4)]
    for i in range(4):
        a.add(i, chunks[i])
    for i in reversed(range(4)):
        b.add(i, chunks[i])
    assert a.hex == b.hex and a.transfers == 4
    # same bytes at indices whose XOR is zero would cancel an XOR combination; a sum does not
    assert a.value != 0


def test_acs_change_affects_only_decisions_made_after_it() -> None:
    r = run_scenario(load_scenario(ROOT / "examples" / "acs.toml"))
    assert r["ok"] is True
    h = r["hosts"][0]
    att = {(a["buffer"], a["device"]): a for a in h["attachments"]}
    pf, vf = att[("act", "nic0")], att[("act", "vf0")]
    # NIC0's decision was cached before the ACS write: still BUS_ADDR, through the switch.
    assert (pf["p2p_decision"], pf["map_type"], pf["iommu"]) == ("BUS_ADDR", "BUS_ADDR", False)
    # The VF attached after it: redirected upstream, through the root complex and the IOMMU.
    assert (vf["p2p_decision"], vf["map_type"], vf["iommu"]) == (
        "THRU_HOST_BRIDGE", "THRU_HOST_BRIDGE", True)
    assert vf["path"] == ["gpu0.mem", "gpu0", "sw0", "hb0", "sw0", "nic0"]
    (acs,) = h["events"]
    assert acs["action"] == "acs" and "cached" in acs["detail"]
    streams = {s["name"]: s for s in h["streams"]}
    assert streams["vf"]["start"] >= 200e-6 - 1e-12
    assert all(s["bytes_verified"] == 16 << 20 for s in streams.values())
    # the redirected path crosses the root port twice: up and back down
    links = {(lk["link"], lk["direction"]) for lk in h["links"]}
    assert {("rp0", "up"), ("rp0", "down")} <= links


def test_a_stream_may_not_start_before_its_import_attaches() -> None:
    text = (ROOT / "examples" / "acs.toml").read_text().replace('start = "200us"',
                                                                'start = "150us"')
    from dmabuf.sim.scenario import ScenarioError

    with pytest.raises(ScenarioError, match=r"acs.toml:\d+: stream 'vf': the stream starts at "
                                            r"150 us, before the import of 'act' by vf0"):
        loads_scenario(text, path="acs.toml")
