"""Every benchmark in ``benchmarks/`` runs in quick mode and reports a well-formed figure.

One parametrised smoke test over the harness's own discovery (what ``dmabuf bench`` runs), so a
new benchmark file is covered without a new test. The figures of quick runs are not the claims
(those are measured by ``dmabuf bench`` in full mode); this checks that each benchmark runs,
compares against a baseline measured in the same run, and says which claim it makes.
"""

from __future__ import annotations

import math

import pytest

from dmabuf import bench
from dmabuf.testing.paths import repo_root

pytestmark = pytest.mark.skipif(repo_root() is None, reason="benchmarks/ lives in the clone")

_REG = bench.discover() if repo_root() is not None else {}


def test_discovery_finds_every_area() -> None:
    areas = {name.split(".")[0] for name in _REG}
    assert {"buf", "buf_repr", "devices", "dma", "mm", "pci", "sim", "sync", "uapi"} <= areas


@pytest.mark.parametrize("name", sorted(_REG))
def test_benchmark_quick(name: str) -> None:
    fn, claim = _REG[name]
    out = fn(True)
    results = out if isinstance(out, list) else [out]
    assert results, f"{name} returned no result"
    area = name.split(".")[0]
    for r in results:
        assert isinstance(r, bench.BenchResult)
        assert r.name.split(".")[0] == area, (name, r.name)
        for v in (r.figure, r.baseline, r.ratio):
            assert math.isfinite(v) and v > 0, r
        assert r.unit and r.baseline_name
        if r.target is not None:
            assert math.isfinite(r.target) and r.target > 0 and r.target_text, r
            assert r.met is (r.ratio >= r.target)
    assert isinstance(claim, str)


def test_bench_cli_lists_and_runs_one() -> None:
    from click.testing import CliRunner

    from dmabuf.cli import main

    runner = CliRunner(env={"COLUMNS": "240"})
    listed = runner.invoke(main, ["bench", "--list"])
    assert listed.exit_code == 0 and "pci.matrix_1000" in listed.output
    ran = runner.invoke(main, ["bench", "--quick", "-k", "pci.map_type_cached"])
    assert ran.exit_code == 0 and "pci.map_type_cached" in ran.output
    bad = runner.invoke(main, ["bench", "-k", "no-such-benchmark"])
    assert bad.exit_code != 0 and "no benchmark matches" in bad.output
