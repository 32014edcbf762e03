"""``dmabuf run SCENARIO``: outputs, exit status, bad scenarios, a missing matplotlib."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dmabuf.cli import main
from dmabuf.sim.report import validate_report

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "examples" / "small.toml"


def test_run_small_scenario_writes_json_and_dot(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["run", str(SMALL), "--json", str(tmp_path / "r.json"),
                                    "--dot", str(tmp_path / "f.dot")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "host small" in res.output and "tx" in res.output and "OK —" in res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert validate_report(report) == []
    assert report["bytes_verified"] == 24 << 20
    assert "digraph fabric" in (tmp_path / "f.dot").read_text()


def test_run_json_to_stdout_and_seed(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["run", str(SMALL), "--json", "-", "--seed", "11"],
                             catch_exceptions=False)
    assert res.exit_code == 0
    report = json.loads(res.stdout)
    assert report["scenario"]["seed"] == 11 and report["ok"] is True


def test_quiet_prints_only_the_verdict() -> None:
    res = CliRunner().invoke(main, ["run", str(SMALL), "-q"], catch_exceptions=False)
    assert res.exit_code == 0
    assert res.output.strip() == "OK: 25165824 bytes verified, 0 failure(s), 0 missing"


def test_bad_scenario_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SMALL.read_text().replace('size = "16MiB"', 'size = "-16MiB"', 1))
    res = CliRunner().invoke(main, ["run", str(bad)])
    assert res.exit_code == 2
    assert f"{bad}:34: buffer 'act': size = '-16MiB': a size cannot be negative" in res.output
    assert "moving and verifying" not in res.output   # nothing ran


def test_failed_checksum_exits_1(tmp_path: Path) -> None:
    text = SMALL.read_text().replace('kind = "nic"\n', 'kind = "nic"\nparams = { '
                                     'ignore_invalidate = true }\n', 1)
    scen = tmp_path / "buggy.toml"
    scen.write_text(text)
    res = CliRunner().invoke(main, ["run", str(scen), "-q"], catch_exceptions=False)
    assert res.exit_code == 1 and res.output.startswith("FAILED:")


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *a: Any, **k: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    res = CliRunner().invoke(main, ["run", str(SMALL), "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 1
    assert "pip install 'pydmabuf[plot]'" in res.output
    assert not (tmp_path / "p.png").exists()


def test_plot_writes_a_png(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["run", str(SMALL), "-q", "--plot", str(tmp_path / "p.png")],
                             catch_exceptions=False)
    assert res.exit_code == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_file() -> None:
    res = CliRunner().invoke(main, ["run", "/no/such/scenario.toml"])
    assert res.exit_code == 2 and "no such scenario file" in res.output
