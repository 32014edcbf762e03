"""``dmabuf demo``: runs to completion, every element of the main job verified in the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dmabuf.cli import main
from dmabuf.sim.report import validate_report


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("demo")
    res = CliRunner().invoke(main, ["demo", "--json", str(out / "r.json"), "--plot",
                                    str(out / "t.png"), "--dot", str(out / "f.dot")],
                             catch_exceptions=False)
    return res, json.loads((out / "r.json").read_text()), out


def _host(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in report["hosts"] if h["name"] == name)


def _att(h: dict[str, Any], buf: str, dev: str) -> dict[str, Any]:
    return next(a for a in h["attachments"] if (a["buffer"], a["device"]) == (buf, dev))


def _stream(h: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in h["streams"] if s["name"] == name)


def test_demo_exits_zero_and_prints_the_report(demo: tuple[Any, dict[str, Any], Path]) -> None:
    res, report, _ = demo
    assert res.exit_code == 0, res.output
    for text in ("host zen", "host broadwell", "attachments: P2P decision and mapping",
                 "gpu0>nic0>nic1>gpu1", "BUS_ADDR", "THRU_HOST_BRIDGE", "STAGED_HOST_MEMORY",
                 "all bytes verified", "OK —"):
        assert text in res.output, text
    assert report["ok"] is True and report["failures"] == []


def test_demo_json_validates_against_the_schema(demo: tuple[Any, dict[str, Any], Path]
                                                ) -> None:
    _, report, _ = demo
    assert validate_report(report) == []
    assert report["schema"] == "pydmabuf.report/1" and report["scenario"]["name"] == "demo"


def test_gpu0_to_nic0_p2p_and_rdma_into_gpu1(demo: tuple[Any, dict[str, Any], Path]) -> None:
    zen = _host(demo[1], "zen")
    a = _att(zen, "act0", "nic0")
    assert (a["p2p_decision"], a["distance"], a["iommu"]) == ("BUS_ADDR", 4, False)
    assert a["path"] == ["gpu0.mem", "gpu0", "sw0", "nic0"]
    b = _att(zen, "recv1", "nic1")
    assert (b["map_type"], b["distance"], b["iommu"]) == ("THRU_HOST_BRIDGE", 4, True)
    assert b["path"] == ["gpu1.mem", "gpu1", "hb0", "nic1"]
    s = _stream(zen, "gpu0>nic0>nic1>gpu1")
    assert s["status"] == "ok" and s["transfers"] == 32
    assert s["bytes"] == s["bytes_verified"] == 128 << 20 and s["crc32"]


def test_vram_pressure_evicts_under_dynamic_and_odp_importers(
        demo: tuple[Any, dict[str, Any], Path]) -> None:
    zen = _host(demo[1], "zen")
    pressure = next(e for e in zen["events"] if e["action"] == "pressure")
    assert pressure["outcome"] == "ok" and "evicted to GTT" in pressure["detail"]
    evicted = {(m["buffer"], m["from"], m["to"]) for m in zen["moves"]}
    assert {("act0", "VRAM", "TT"), ("act1", "VRAM", "TT"), ("act0", "TT", "VRAM")} <= evicted
    dyn = _att(zen, "act0", "nic0")
    assert dyn["mode"] == "dynamic" and dyn["invalidations"] >= 2 and dyn["remaps"] >= 2
    assert dyn["locations"][:2] == ["vram", "gtt"]
    odp = _att(zen, "act1", "nic0")
    assert odp["mode"] == "odp" and odp["invalidations"] >= 1 and odp["faults"] >= 2
    assert _stream(zen, "odp:gpu0>nic1")["bytes_verified"] == 128 << 20


def test_pinned_accelerator_export(demo: tuple[Any, dict[str, Any], Path]) -> None:
    zen = _host(demo[1], "zen")
    a = _att(zen, "weights", "nic1")
    assert (a["exporter"], a["mode"], a["map_type"], a["invalidations"]) == (
        "acc0", "pinned", "THRU_HOST_BRIDGE", 0)
    assert _stream(zen, "acc0>nic1>nic0")["bytes_verified"] == 32 << 20


def test_vfio_reset_revokes_the_import(demo: tuple[Any, dict[str, Any], Path]) -> None:
    zen = _host(demo[1], "zen")
    reset = next(e for e in zen["events"] if e["action"] == "reset")
    assert reset["outcome"] == "ok" and "doorbells@nic1" in reset["detail"]
    a = _att(zen, "doorbells", "nic1")
    assert a["mode"] == "revocable" and a["invalidations"] == 1
    s = _stream(zen, "doorbell>nvme1")
    assert s["status"] == "revoked" and 0 < s["transfers"] < s["count"]
    assert s["bytes_verified"] == s["bytes"] and "revoked" in s["stopped"]


def test_nvme_cmb_p2p(demo: tuple[Any, dict[str, Any], Path]) -> None:
    zen = _host(demo[1], "zen")
    a = _att(zen, "cmb", "nic0")
    assert (a["exporter"], a["map_type"], a["iommu"], a["location"]) == (
        "nvme0", "BUS_ADDR", False, "cmb")
    s = _stream(zen, "nic1>nic0>nvme0.cmb")
    assert s["status"] == "ok" and s["bytes_verified"] == 32 << 20


def test_svm_buffer_mirrored_by_an_odp_mr_ping_pongs(
        demo: tuple[Any, dict[str, Any], Path]) -> None:
    zen = _host(demo[1], "zen")
    a = _att(zen, "svm", "nic0")
    # HMM: GPU1's DEVICE_PRIVATE VRAM is not reachable by NIC0: its faults migrate the pages to
    # host memory; GPU1's prefetch back (restore) invalidates the mirror, which re-faults
    assert (a["mode"], a["exporter"], a["repr_used"], a["iommu"]) == ("hmm", "gpu1", "iova",
                                                                      True)
    assert a["map_type"] == "HOST_MEMORY (HMM: device-private VRAM migrates to RAM)"
    assert a["mapping_bytes"] == (16 << 20) // 4096 * 16 + 16
    assert a["invalidations"] >= 2 and a["remaps"] >= 1 and a["faults"] >= 16
    restore = next(e for e in zen["events"] if e["action"] == "restore" and
                   e["target"] == "svm")
    assert restore["outcome"] == "ok" and "DEVICE_PRIVATE" in restore["detail"]
    svm = [(m["from"], m["to"]) for m in zen["moves"] if m["buffer"] == "svm"]
    assert svm[0] == ("RAM", "VRAM") and ("VRAM", "RAM") in svm and svm.count(
        ("RAM", "VRAM")) == 2
    s = _stream(zen, "svm:gpu1>nic0>nic1")
    assert s["status"] == "ok" and s["bytes_verified"] == 32 << 20


def test_non_allow_listed_host_falls_back_to_staging(
        demo: tuple[Any, dict[str, Any], Path]) -> None:
    bw = _host(demo[1], "broadwell")
    assert bw["topology"]["cpu"]["cpu_supports_p2pdma"] is False
    a = _att(bw, "recv1", "nic1")
    assert (a["p2p_decision"], a["distance"], a["map_type"], a["location"]) == (
        "NOT_SUPPORTED", -1, "STAGED_HOST_MEMORY", "gtt")
    assert [(m["buffer"], m["to"]) for m in bw["moves"]] == [("recv1", "TT")]
    s = _stream(bw, "nic0>nic1>gpu1.staged")
    assert s["status"] == "ok" and s["bytes_verified"] == 128 << 20


def test_every_stream_is_verified_and_nothing_is_missing(
        demo: tuple[Any, dict[str, Any], Path]) -> None:
    report = demo[1]
    assert report["missing"] == []
    for h in report["hosts"]:
        assert h["faults"] == [] and h["failures"] == []
        for s in h["streams"]:
            assert s["bytes_verified"] == s["bytes"] > 0 and s["crc32"], s["name"]
        for b in h["buffers"]:
            assert b["verified"], b["name"]


def test_demo_pictures(demo: tuple[Any, dict[str, Any], Path]) -> None:
    out = demo[2]
    png = (out / "t.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    dot = (out / "f.dot").read_text()
    assert dot.startswith("digraph fabric {") and '"h0:gpu0" -> "h0:sw0"' not in dot
    assert '"h0:sw0" -> "h0:gpu0"' in dot and "gpu0>nic0>nic1>gpu1" in dot


def test_plot_rows_pack_spans_greedily() -> None:
    from dmabuf.sim.plot import _rows

    assert _rows([]) == []
    assert _rows([(0, 10), (5, 8), (9, 12), (10, 11), (20, 30)]) == [0, 1, 1, 0, 0]
    assert _rows([(10, 20), (0, 5), (4, 12)]) == [0, 0, 1]  # input order does not matter
    assert _rows([(0, 10), (12, 20)], gap=3) == [0, 1]


def test_demo_plot_labels_do_not_collide(demo: tuple[Any, dict[str, Any], Path]) -> None:
    import matplotlib.pyplot as plt

    from dmabuf.sim.plot import _figure

    report = demo[1]
    fig = _figure(report, 110)
    try:
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]  # zen's timeline
        frame = ax.get_window_extent(renderer)
        texts = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
        events = [e["label"] for e in _host(report, "zen")["events"]]
        assert events == ["pressure gpu0 160MiB", "restore svm", "reset nvme1", "restore act0"]
        boxes = [texts[label] for label in events]
        assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[:i] if a.overlaps(b)]
        assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 for b in boxes)
        # Only the three long GPU moves have room for a name; the 2 MiB SVM moves stay bare.
        moves = sorted(set(texts) - set(events) - {"revoked"})
        assert moves == ["act0 TT→VRAM", "act0 VRAM→TT", "act1 VRAM→TT"]
    finally:
        plt.close(fig)


def test_demo_show_prints_the_scenario() -> None:
    res = CliRunner().invoke(main, ["demo", "--show"])
    assert res.exit_code == 0 and res.output.startswith("# pydmabuf demo")
