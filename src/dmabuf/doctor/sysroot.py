"""A root laid out like ``/`` — fs/proc and fs/sysfs as the doctor reads them.

Kernel: fs/proc (``/proc/cmdline``, ``/proc/modules``, ``/proc/config.gz`` from kernel/configs.c),
fs/sysfs (``/sys``), drivers/base/devtmpfs.c (``/dev``).

:class:`SysRoot` wraps either the running machine's ``/`` (``live``) or a captured root (the
shared fixtures, or one written by ``dmabuf doctor --capture``). Every read is side-effect free:
plain files are read whole, links are read with ``readlink`` (or, in captures whose links were
flattened to small text files, by reading the text), directories are listed, device nodes are only
``stat``-ed — never opened.

Live or captured matters for one question: *is something absent, or was it not captured?* On the
live root absence is a fact. A capture written by pydmabuf carries a manifest
(``pydmabuf-capture.json``: what was captured, the device nodes with their modes and the
capturing user's access) and absence of a captured item is a fact too. A capture without a manifest
(the shared fixtures: PCI sysfs, cpuinfo, cmdline, config.gz, uname only) answers "unknown" for
everything else — :meth:`SysRoot.captured` returns ``None`` — and the doctor says "not captured"
instead of guessing.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from dmabuf.errors import DmaBufError

__all__ = ["MANIFEST", "MANIFEST_FORMAT", "SysRoot"]

#: File name of a pydmabuf capture's manifest, at the capture's top.
MANIFEST = "pydmabuf-capture.json"
#: Format tag inside the manifest.
MANIFEST_FORMAT = "pydmabuf.capture/1"


class SysRoot:
    """The machine (or capture) the doctor looks at.

    Args:
        root: directory laid out like ``/``; ``"/"`` is the running machine.

    Context:
        Reads files only; no locks.

    Raises:
        DmaBufError(ENOENT): ``root`` does not exist, or has no ``sys/`` directory.
        DmaBufError(ENOTDIR): ``root`` is not a directory.
        DmaBufError(EINVAL): the capture manifest is not valid JSON of the expected format.

    Kernel: fs/proc, fs/sysfs.
    """

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise DmaBufError(errno.EINVAL, f"root must be a path, not {type(root).__name__}")
        p = Path(root)
        if not p.exists():
            raise DmaBufError(errno.ENOENT, f"{p}: no such directory; give a directory laid out "
                              "like / (with sys/ and proc/), e.g. one written by "
                              "'dmabuf doctor --capture DIR'")
        if not p.is_dir():
            raise DmaBufError(errno.ENOTDIR, f"{p}: not a directory; give a directory laid out "
                              "like / (with sys/ and proc/)")
        if not (p / "sys").is_dir():
            raise DmaBufError(errno.ENOENT, f"{p}/sys: missing; {p} is not a root laid out like "
                              "/ (a capture has sys/devices, sys/bus/pci/devices, proc/ and "
                              "uname); write one with 'dmabuf doctor --capture DIR'")
        self.path = p
        try:
            self.live = p.resolve() == Path("/").resolve()
        except OSError:
            self.live = False
        self.manifest: dict[str, Any] | None = None
        if not self.live:
            self.manifest = self._load_manifest()

    def _load_manifest(self) -> dict[str, Any] | None:
        mp = self.path / MANIFEST
        if not mp.is_file():
            return None
        try:
            data = json.loads(mp.read_text())
        except (OSError, ValueError) as e:
            raise DmaBufError(errno.EINVAL, f"{mp}: not a valid capture manifest ({e}); delete "
                              "it or capture again") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise DmaBufError(errno.EINVAL, f"{mp}: format is not {MANIFEST_FORMAT!r}; capture "
                              "again with this version of pydmabuf")
        return data

    def __repr__(self) -> str:
        kind = "live" if self.live else ("capture+manifest" if self.manifest else "capture")
        return f"<SysRoot {self.path} ({kind})>"

    # -- what is known --------------------------------------------------------------------------
    def captured(self, item: str) -> bool | None:  # True or None, never False
        """Was ``item`` (``"proc/modules"``, ``"dev"``, ``"sys/class"``…) recorded?

        Returns:
            True on the live root and for an item a pydmabuf manifest lists (then its absence
            from the capture is a fact about the machine); ``None`` (unknown) otherwise.
        """
        if self.live:
            return True
        if self.manifest is not None and item in self.manifest.get("captured", []):
            return True
        return None

    @property
    def kind(self) -> str:
        """``"live"``, ``"capture"`` (pydmabuf, with manifest) or ``"capture without manifest"``."""
        if self.live:
            return "live"
        return "capture" if self.manifest is not None else "capture without manifest"

    # -- reads ----------------------------------------------------------------------------------
    def file(self, rel: str) -> Path:
        """The path of ``rel`` (``"proc/cmdline"``) under the root."""
        return self.path / rel.lstrip("/")

    def exists(self, rel: str) -> bool:
        """True when ``rel`` exists (a dangling link counts as existing)."""
        p = self.file(rel)
        return p.exists() or p.is_symlink()

    def read_text(self, rel: str) -> str | None:
        """Whole text of a file, ``None`` if missing or unreadable (permission, a directory)."""
        try:
            return self.file(rel).read_text(errors="replace")
        except OSError:
            return None

    def read_bytes(self, rel: str) -> bytes | None:
        """Whole content of a file, ``None`` if missing or unreadable."""
        try:
            return self.file(rel).read_bytes()
        except OSError:
            return None

    def readlink(self, rel: str) -> str | None:
        """Target of a link: a real symlink, or a flattened capture's one-line text file."""
        p = self.file(rel)
        if p.is_symlink():
            try:
                return os.readlink(p)
            except OSError:
                return None
        if p.is_file():
            try:
                text = p.read_text(errors="replace").strip()
            except OSError:
                return None
            if text and "\n" not in text and len(text) <= 4096:
                return text
        return None

    def listdir(self, rel: str) -> list[str] | None:
        """Sorted entry names of a directory (hidden ``.keep`` files skipped), ``None`` if none."""
        try:
            names = os.listdir(self.file(rel))
        except OSError:
            return None
        return sorted(n for n in names if not n.startswith("."))
