"""Live P2P oracle tier: real PCI P2PDMA decisions of a 6.12 kernel vs the model's.

``/work/shared/kernel/scripts/run-case.sh`` boots the P2PDMA-enabled kernel under QEMU q35
with one topology, captures the guest's PCI sysfs and runs a real O_DIRECT transfer for every
p2pmem provider x block device (``dmabuf.testing.qemu.run_p2p_case``). Here we check

1. the run itself: the capture is a sysfs root with the same functions as the stored fixture
   of that case, the ``RESULT`` lines parse and cover every provider x client, and the
   outcomes equal the ones recorded in ``fixtures/sysfs-roots/<case>/expected.json``;
2. the model: :func:`dmabuf.pci.load_sysfs` on the live capture, then
   :func:`dmabuf.pci.explain` for each pair — ``BUS_ADDR``/``THRU_HOST_BRIDGE`` must match a
   successful transfer, ``NOT_SUPPORTED`` an ``EREMOTEIO``, and the kernel's p2pdma log lines
   of that pair must equal the model's ``kernel_log`` exactly (virtio-blk clients are refused
   by the block layer before any topology decision: the kernel logs nothing for them).

Cases: ``PYDMABUF_P2P_CASES`` (comma-separated, or ``all``; default all six), two QEMU guests
at a time (each TCG guest is single-threaded).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from dmabuf.testing import qemu
from dmabuf.testing.paths import sysfs_roots_dir

FIXTURES = sysfs_roots_dir()
_env = os.environ.get("PYDMABUF_P2P_CASES", "all")
CASES = list(qemu.P2P_CASES) if _env == "all" else [c for c in _env.split(",") if c]
P2P_LOG_RE = re.compile(r"peer-to-peer|ACS redirect|disable_acs_redir|P2PDMA whitelist")


def _selected_cases(session: pytest.Session) -> list[str]:
    """The cases whose tests were selected (``-k`` may have deselected some)."""
    chosen = {item.callspec.params["case"] for item in session.items
              if getattr(item, "callspec", None) is not None
              and "case" in item.callspec.params and item.module is not None
              and item.module.__name__ == __name__}
    return [c for c in CASES if c in chosen] or list(CASES)


@pytest.fixture(scope="session")
def p2p_runs(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every selected case (two at a time); case -> P2PCaseRun or the failure text."""
    reason = qemu.qemu_unavailable_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("p2p-oracle")
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        qemu.build_p2p_initrd(qemu.p2p_kit_dir())  # once, before the parallel runs
    except qemu.QemuUnavailable as e:
        pytest.skip(e.reason)
    if not (qemu.p2p_kit_dir() / "bzImage-6.12-p2pdma").exists():
        pytest.skip(f"P2P oracle kit not found at {qemu.p2p_kit_dir()}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futs = {c: pool.submit(qemu.run_p2p_case, c, base / c, timeout=150)
                for c in _selected_cases(request.session)}
        for c, f in futs.items():
            try:
                out[c] = f.result(timeout=400)
            except qemu.QemuUnavailable as e:
                pytest.skip(e.reason)
            except Exception as e:  # reported by the per-case test
                out[c] = f"{type(e).__name__}: {e}"
    out["_wall_s"] = round(time.monotonic() - t0, 1)
    return out


def _run(p2p_runs: dict[str, Any], case: str) -> qemu.P2PCaseRun:
    run = p2p_runs[case]
    if isinstance(run, str):
        pytest.fail(f"case {case} did not run: {run}")
    assert isinstance(run, qemu.P2PCaseRun)
    return run


def _expected(case: str) -> dict[str, Any] | None:
    p = FIXTURES / case / "expected.json"
    return json.loads(p.read_text()) if p.exists() else None


def _functions(root: Path) -> set[str]:
    return {p.name for p in (root / "sys" / "bus" / "pci" / "devices").iterdir()}


def _driver(root: Path, bdf: str) -> str | None:
    link = root / "sys" / "bus" / "pci" / "devices" / bdf / "driver"
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


def _dmesg_p2p_lines(text: str) -> list[str]:
    lines = [re.sub(r"^\[\s*[0-9.]+\]\s*", "", ln) for ln in text.splitlines()]
    return [ln for ln in lines if P2P_LOG_RE.search(ln)]


@pytest.mark.qemu
@pytest.mark.timeout(900)  # the first test pays for all the boots
@pytest.mark.parametrize("case", CASES)
def test_case_capture_and_results(p2p_runs: dict[str, Any], case: str) -> None:
    """The live run produced a sysfs root and one parsed RESULT per provider x block device."""
    run = _run(p2p_runs, case)
    root = run.root
    assert (root / "sys" / "devices").is_dir()
    assert (root / "proc" / "cpuinfo").is_file() and (root / "uname").is_file()
    assert "6.12.107" in (root / "uname").read_text()
    funcs = _functions(root)
    exp = _expected(case)
    if exp is not None:
        assert funcs == _functions(FIXTURES / case / "root"), "live capture differs from fixture"
    providers = {p["provider"] for p in run.providers}
    assert providers and all(p["published"] == 1 and p["size"] == 16 << 20
                             for p in run.providers)
    assert providers <= funcs
    nblk = len(run.results) // len(providers)
    assert len(run.results) == nblk * len(providers) and nblk >= 2
    for r in run.results:
        assert set(r) >= {"provider", "client", "blockdev", "read_errname", "write_errname",
                          "read_data_ok", "write_data_ok"}, r
        assert r["read_errname"] in ("ok", "EREMOTEIO") and r["client"] in funcs, r
        assert r["read_errname"] == r["write_errname"], r
        assert (r["provider"], r["client"]) in run.dmesg
    if exp is not None:
        real = {(r["provider"], r["client"]): r["read_errname"] for r in run.results}
        recorded = {(p["provider"], p["client"]): p["real_result"] for p in exp["pairs"]}
        assert real == recorded, "live outcomes differ from the recorded fixture"


@pytest.mark.qemu
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES)
def test_model_matches_live_kernel(p2p_runs: dict[str, Any], case: str) -> None:
    """dmabuf.pci's decision for each live pair equals the kernel's (outcome and log lines)."""
    if importlib.util.find_spec("dmabuf.pci") is None:
        pytest.skip("dmabuf.pci is not available: model comparison pending")
    from dmabuf.pci import PciP2pdmaMapType, explain, load_sysfs

    run = _run(p2p_runs, case)
    topo = load_sysfs(run.root)
    diffs = []
    compared = 0
    for r in run.results:
        prov, client = str(r["provider"]), str(r["client"])
        ex = explain(topo.device(prov), topo.device(client))
        real_ok = r["read_errname"] == "ok"
        real_log = _dmesg_p2p_lines(run.dmesg[(prov, client)])
        if _driver(run.root, client) != "nvme":
            # virtio-blk: the block layer refuses (no P2P queue flag) before any decision.
            if real_ok or real_log:
                diffs.append(f"{prov}->{client}: non-NVMe client unexpectedly {r['read_errname']}"
                             f" {real_log}")
            compared += 1
            continue
        model_ok = ex.map_type in (PciP2pdmaMapType.BUS_ADDR,
                                   PciP2pdmaMapType.THRU_HOST_BRIDGE)
        model_log = [ln for ln in ex.kernel_log if P2P_LOG_RE.search(ln)]
        if model_ok != real_ok:
            diffs.append(f"{prov}->{client}: kernel {r['read_errname']}, model "
                         f"{ex.map_type.name} (distance {ex.distance}): {ex.reasons}")
        if model_log != real_log:
            diffs.append(f"{prov}->{client}: kernel log {real_log} != model log {model_log}")
        compared += 1
    assert compared == len(run.results)
    assert not diffs, f"{case}: {len(diffs)} of {compared} pairs differ:\n" + "\n".join(diffs)
