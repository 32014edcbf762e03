"""Fixtures of the parity tier: one QEMU boot per session runs the whole behaviour table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from dmabuf.testing import qemu

GUEST_MAIN = Path(__file__).resolve().parent / "guest_main.py"


@pytest.fixture(scope="session")
def kernel_observations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Boot Debian's 6.12 under QEMU once and run ``guest_main.py`` there (host Python, 9p).

    Skips (with the reason) when QEMU or the kernel package is unavailable; fails with the
    console tail when the guest panics, times out or does not produce results.
    """
    reason = qemu.qemu_unavailable_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("uapi-guest")
    t0 = time.monotonic()
    try:
        run = qemu.run_guest_python([str(GUEST_MAIN), str(out / "observations.json")], out,
                                    timeout=240)
    except qemu.QemuUnavailable as e:
        pytest.skip(e.reason)
    if not run.ok or run.exit_code != 0 or not (out / "observations.json").exists():
        pytest.fail(f"uAPI guest run failed (exit {run.exit_code}): {run.failure()}")
    data: dict[str, Any] = json.loads((out / "observations.json").read_text())
    data["host"] = {"wall_s": round(time.monotonic() - t0, 2), "boot_wall_s":
                    round(run.boot.wall_s, 2), "marks": run.boot.marks(),
                    "kernel_package": run.kernel.package, "dir": str(out)}
    return data
