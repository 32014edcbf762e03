"""Shared helpers of the doctor tests: the captured roots and synthetic roots built from them."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dmabuf.cli import main
from dmabuf.doctor import MANIFEST, capture_root
from dmabuf.testing.paths import sysfs_roots_dir

FIX = sysfs_roots_dir()
ROOTS = sorted(p.parent.name for p in FIX.glob("*/root")) if FIX.is_dir() else []
needs_fixtures = pytest.mark.skipif(not ROOTS, reason=f"captured roots not found at {FIX}")

_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")


def root_of(case: str) -> Path:
    """``FIX/<case>/root``."""
    return FIX / case / "root"


def expected(case: str) -> dict[str, Any]:
    """The case's expected.json."""
    data: dict[str, Any] = json.loads((FIX / case / "expected.json").read_text())
    return data


def config_values(config_gz: Path) -> dict[str, str]:
    """An independent reading of a config.gz (y/m/n/value; missing names are 'absent')."""
    out: dict[str, str] = {}
    for line in gzip.decompress(config_gz.read_bytes()).decode().splitlines():
        m = _SET.match(line)
        if m:
            out[m.group(1)] = m.group(2)
        m = _UNSET.match(line)
        if m:
            out[m.group(1)] = "n"
    return out


def run(*args: str) -> Result:
    """``dmabuf doctor ARGS`` through CliRunner, wide terminal."""
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, ["doctor", *args])


def synthetic(tmp: Path, case: str = "a_switch_intel", *, config: str | None = None,
              modules: str | None = None, cmdline: str | None = None,
              devnodes: list[dict[str, Any]] | None = None, user: dict[str, Any] | None = None,
              ) -> Path:
    """A root copied from a captured case, with files replaced and a manifest listing them.

    Args:
        config: text of a .config to gzip into proc/config.gz (replacing the case's).
        modules: text of proc/modules.
        cmdline: text of proc/cmdline.
        devnodes: manifest device-node records (marks "dev" captured).
        user: manifest user record.
    """
    dest = tmp / f"syn-{case}"
    capture_root(dest, root_of(case))
    man = json.loads((dest / MANIFEST).read_text())
    if config is not None:
        (dest / "proc" / "config.gz").write_bytes(gzip.compress(config.encode()))
    if modules is not None:
        (dest / "proc" / "modules").write_text(modules)
        man["captured"].append("proc/modules")
    if cmdline is not None:
        (dest / "proc" / "cmdline").write_text(cmdline)
    if devnodes is not None:
        man["devnodes"] = devnodes
        man["captured"].append("dev")
    if user is not None:
        man["user"] = user
    (dest / MANIFEST).write_text(json.dumps(man))
    return dest


def node(path: str, kind: str = "chr", *, r: bool = True, w: bool = True, mode: str = "crw-rw----",
         uid: int = 0, gid: int = 44) -> dict[str, Any]:
    """A manifest device-node record."""
    return {"path": path, "kind": kind, "rdev": "10:125" if kind == "chr" else None, "mode": mode,
            "uid": uid, "gid": gid, "owner": "root", "group": "video", "readable": r,
            "writable": w}
