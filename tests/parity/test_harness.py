"""The QEMU harness itself, without booting anything: cpio writer, RESULT parser, skip reasons,
timeout and panic detection (with a fake qemu-system-x86_64)."""

from __future__ import annotations

import io
import os
import stat
import time
from pathlib import Path

import pytest

from dmabuf.testing import qemu


def _read_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    out, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        pos = (name_start + namesize + 3) & ~3
        body = data[pos:pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append((name, f[1], body, (f[9], f[10])))


def test_newc_cpio_roundtrip() -> None:
    entries = [qemu.CpioEntry("bin", 0o040755), qemu.CpioEntry("bin/x", 0o100755, b"abc"),
               qemu.CpioEntry("dev/console", 0o020600, rdev=(5, 1)),
               qemu.CpioEntry("init", 0o100755, b"#!/bin/sh\n")]
    buf = io.BytesIO()
    qemu.write_newc_cpio(entries, buf)
    got = _read_newc(buf.getvalue())
    assert got == [("bin", 0o040755, b"", (0, 0)), ("bin/x", 0o100755, b"abc", (0, 0)),
                   ("dev/console", 0o020600, b"", (5, 1)),
                   ("init", 0o100755, b"#!/bin/sh\n", (0, 0))]
    assert len(buf.getvalue()) % 4 == 0


def test_parse_result_line() -> None:
    line = ("RESULT provider=0000:04:00.0 blockdev=/dev/nvme0n1 len=1048576 read_ret=-1 "
            "read_errno=121 read_errname=EREMOTEIO read_data_ok=0 client=0000:05:00.0")
    r = qemu.parse_result_line(line)
    assert r == {"provider": "0000:04:00.0", "blockdev": "/dev/nvme0n1", "len": 1048576,
                 "read_ret": -1, "read_errno": 121, "read_errname": "EREMOTEIO",
                 "read_data_ok": 0, "client": "0000:05:00.0"}
    p = qemu.parse_result_line("provider 0000:04:00.0 size=16777216 available=1 published=1")
    assert p == {"provider": "0000:04:00.0", "size": 16777216, "available": 1, "published": 1}
    for bad in ("", "hello x=1", "RESULT novalue"):
        with pytest.raises(ValueError):
            qemu.parse_result_line(bad)


def _fake_qemu(tmp_path: Path, body: str) -> str:
    p = tmp_path / "qemu-system-x86_64"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


def test_skip_reason_when_qemu_is_missing(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("PYDMABUF_QEMU", str(tmp_path / "nope"))
    reason = qemu.qemu_unavailable_reason()
    assert reason is not None and "install-qemu.sh" in reason
    with pytest.raises(qemu.QemuUnavailable, match="qemu-system-x86_64 not found"):
        qemu.boot(tmp_path / "k", tmp_path / "i")
    with pytest.raises(qemu.QemuUnavailable):
        qemu.run_p2p_case("a_switch_intel", tmp_path / "out")


def test_boot_detects_a_panic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYDMABUF_QEMU", _fake_qemu(tmp_path, (
        "echo 'PYDMABUF_T_INIT uptime=1.50'\n"
        "echo '[    1.465098] Kernel panic - not syncing: VFS: Unable to mount root fs'\n"
        "exit 0")))
    r = qemu.boot(tmp_path / "k", tmp_path / "i", console_log=tmp_path / "c.log")
    assert r.panic == "[    1.465098] Kernel panic - not syncing: VFS: Unable to mount root fs"
    assert not r.timed_out and r.returncode == 0 and r.marks() == {"INIT": 1.5}
    assert "Kernel panic" in (tmp_path / "c.log").read_text()
    assert "-accel" in r.command and "tcg,thread=single" in r.command


def test_boot_times_out_and_kills_the_group(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PYDMABUF_QEMU", _fake_qemu(tmp_path, "echo booting; sleep 60; echo no"))
    t0 = time.monotonic()
    r = qemu.boot(tmp_path / "k", tmp_path / "i", timeout=1.0)
    assert r.timed_out and r.returncode is None and r.panic is None
    assert time.monotonic() - t0 < 20 and r.console.strip() == "booting"


def test_guest_run_failure_texts(tmp_path: Path) -> None:
    base = qemu.BootResult([], "line\n", 0, 1.0, False, None)
    kernel = qemu.DebianKernel("v", tmp_path, tmp_path, tmp_path, "pkg")
    assert "without a result" in qemu.GuestRun(base, tmp_path, None, kernel).failure()
    panic = qemu.BootResult([], "x", None, 1.0, False, "Kernel panic - not syncing: x")
    assert "panic" in qemu.GuestRun(panic, tmp_path, None, kernel).failure()
    slow = qemu.BootResult([], "x", None, 99.0, True, None)
    assert "did not power off" in qemu.GuestRun(slow, tmp_path, None, kernel).failure()
    setup = qemu.BootResult([], "PYDMABUF_GUEST_FAILED tmpfs\n", 0, 1.0, False, None)
    g = qemu.GuestRun(setup, tmp_path, None, kernel)
    assert not g.ok and "PYDMABUF_GUEST_FAILED tmpfs" in g.failure()


def test_cache_dir_override_and_no_download(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PYDMABUF_QEMU_CACHE", str(tmp_path / "cache"))
    assert qemu.cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()
    with pytest.raises(qemu.QemuUnavailable, match=r"install-qemu\.sh"):
        qemu.prepare_debian_kernel(download=False)


def test_unknown_p2p_case() -> None:
    with pytest.raises(ValueError, match="a_switch_intel"):
        qemu.run_p2p_case("nope", Path(os.devnull))
