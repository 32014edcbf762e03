"""The README's promises: the two commands exist and the tour runs."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from dmabuf.testing.paths import repo_root

ROOT = repo_root()
pytestmark = pytest.mark.skipif(ROOT is None, reason="needs the source tree (editable install)")


def _command(marker: str) -> str:
    assert ROOT is not None
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\n```\n(.+)\n```", text)
    assert m, f"README.md has no {marker} block"
    return m.group(1)


def test_two_commands() -> None:
    main = _command("main-command")
    test = _command("test-command")
    assert main.endswith(".venv/bin/dmabuf demo") and "pip install" in main
    assert "pytest" in test and "pip install" in test and "'.[test]'" in test


def test_ci_runs_the_readme_test_command() -> None:
    assert ROOT is not None
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and 'bash -c "$test_cmd"' in ci


def test_tour_explores_without_deadlock() -> None:
    assert ROOT is not None
    ns = runpy.run_path(str(Path(ROOT) / "examples" / "tour.py"))
    res = ns["explore"](ns["scenario"], seeds=30)
    assert res.seeds == 30 and res.switches > 0
