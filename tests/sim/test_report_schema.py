"""The report schema ships as package data; docs/report-schema.json is an identical copy."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from dmabuf.sim.report import load_schema, validate_report

ROOT = Path(__file__).resolve().parents[2]


def test_packaged_schema_is_the_documented_one() -> None:
    packaged = resources.files("dmabuf").joinpath("data", "report-schema.json")
    docs = ROOT / "docs" / "report-schema.json"
    assert packaged.read_bytes() == docs.read_bytes()
    assert load_schema() == json.loads(docs.read_text(encoding="utf-8"))


def test_load_schema_needs_only_the_installed_package(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # An installed (non-editable) package has no docs/ next to it: only its data files.
    pkg = tmp_path / "site-packages" / "dmabuf"
    (pkg / "data").mkdir(parents=True)
    marker = {"title": "installed copy", "$defs": {}}
    (pkg / "data" / "report-schema.json").write_text(json.dumps(marker))
    import dmabuf.sim.report as report

    monkeypatch.setattr(report.resources, "files", lambda name: pkg)
    assert report.load_schema() == marker


def test_schema_documents_the_new_fields() -> None:
    schema = load_schema()
    att = schema["$defs"]["attachment"]
    assert {"repr_used", "repr_note"} <= set(att["required"])
    assert att["properties"]["repr_used"]["enum"] == ["sgtable", "physvec", "iova",
                                                      "hmm_dma_map", None]
    assert "fabric_events" in schema["$defs"]["host"]["required"]
    assert "$: missing required 'hosts'" in validate_report({"schema": "pydmabuf.report/1"})
