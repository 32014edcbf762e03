"""Capture a machine into a root laid out like ``/`` — the Python twin of capture-sysfs.sh.

Kernel: drivers/pci/pci-sysfs.c (the attributes), drivers/iommu/iommu.c (iommu_groups),
kernel/configs.c (config.gz), fs/proc.

``dmabuf doctor --capture DIR`` writes what ``shared/kernel/scripts/guest/capture-sysfs.sh``
writes, so that ``dmabuf doctor --sysfs-root DIR`` and ``dmabuf topo show --sysfs-root DIR`` read
it exactly as they read the running machine:

* ``sys/devices/pciDDDD:BB/<bdf>/…/<bdf>/`` — the real nesting of PCI function directories (only
  directories whose every component below the host bridge is a PCI address: port-service
  directories and ``pci_bus/`` are skipped), each with the plain attributes ``vendor device
  subsystem_vendor subsystem_device class revision config numa_node local_cpulist
  current_link_speed current_link_width max_link_speed max_link_width secondary_bus_number
  subordinate_bus_number resource irq enable`` (``config`` copied as binary) and
  ``p2pmem/{size,available,published}``;
* the ``iommu_group`` and ``driver`` links of each function, recreated as symlinks with the
  kernel's relative targets (an empty ``sys/bus/pci/drivers/<name>/`` is made for each driver),
  ``sys/bus/pci/devices/<bdf>`` links, ``sys/kernel/iommu_groups/<n>/devices/<bdf>`` links;
* ``proc/cpuinfo``, ``proc/cmdline``, ``proc/config.gz`` and ``uname`` (``uname -a``).

What the doctor reads beyond that, also side-effect free, is added and listed in the manifest
(``pydmabuf-capture.json``) under ``captured``: ``physfn`` links of SR-IOV VFs (the loader needs
them), ``sys/kernel/iommu_groups/<n>/type``, ``proc/modules``, ``proc/sys/kernel/osrelease``,
``proc/version``, ``boot/config-<release>`` when there is no ``config.gz``, the links of
``sys/class/{iommu,dma_heap,drm,infiniband,infiniband_verbs,vfio,accel}`` and of
``sys/class/misc/{udmabuf,iommu,vfio}``, the names of relevant ``sys/module`` entries,
``sys/kernel/mm/memory_peers/*/version``, ``proc/driver/nvidia/version``, and the device nodes
of interest as records (``lstat`` + ``access`` of the capturing user — nodes are never opened,
never recreated).

Never read: ``reset``, ``remove``, ``rescan``, ``rom``, ``resourceN``/``resourceN_wc``,
``p2pmem/allocate``, ``driver_override`` or anything else outside the lists above. Never
written: anything outside DIR; DIR must be new or empty, and every write checks that its
resolved parent is inside DIR.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmabuf.doctor.devnodes import NODE_GROUPS, current_user, scan_group
from dmabuf.doctor.modules import RELEVANT_MODULES
from dmabuf.doctor.sysroot import MANIFEST, MANIFEST_FORMAT, SysRoot
from dmabuf.errors import DmaBufError

__all__ = ["ATTRS", "P2PATTRS", "CaptureResult", "capture_root"]

#: Function attributes copied (capture-sysfs.sh ``ATTRS``).
ATTRS = ("vendor", "device", "subsystem_vendor", "subsystem_device", "class", "revision",
         "config", "numa_node", "local_cpulist", "current_link_speed", "current_link_width",
         "max_link_speed", "max_link_width", "secondary_bus_number", "subordinate_bus_number",
         "resource", "irq", "enable")
#: ``p2pmem/`` attributes copied (never ``allocate``).
P2PATTRS = ("size", "available", "published")
_LINKS = ("iommu_group", "driver")
_EXTRA_LINKS = ("physfn",)
_CLASSES = ("iommu", "dma_heap", "drm", "infiniband", "infiniband_verbs", "vfio", "accel")
_MISC = ("udmabuf", "iommu", "vfio")
_BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_HB_RE = re.compile(r"^pci[0-9a-f]")


@dataclass
class CaptureResult:
    """What :func:`capture_root` wrote.

    Attributes:
        dest: the capture directory.
        functions: PCI function directories copied.
        files: regular files written.
        links: symlinks created.
        captured: optional items recorded (the manifest's ``captured`` list).
        notes: what was skipped and why.
    """

    dest: str
    functions: int = 0
    files: int = 0
    links: int = 0
    captured: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """JSON form."""
        return {"dest": self.dest, "functions": self.functions, "files": self.files,
                "links": self.links, "captured": list(self.captured), "notes": list(self.notes)}


class _Writer:
    """All writes go through here: relative paths only, resolved parents inside ``dest``."""

    def __init__(self, dest: Path, result: CaptureResult) -> None:
        self.dest = dest
        self.real = os.path.realpath(dest)
        self.result = result

    def _path(self, rel: str) -> str:
        rel = rel.lstrip("/")
        if not rel or ".." in Path(rel).parts:
            raise DmaBufError(errno.EINVAL, f"capture: refusing to write {rel!r} (outside the "
                              "capture directory)")
        p = os.path.join(self.dest, rel)
        parent = os.path.realpath(os.path.dirname(p))
        if parent != self.real and not parent.startswith(self.real + os.sep):
            raise DmaBufError(errno.EXDEV, f"capture: {p} would be written outside {self.dest} "
                              f"(resolves to {parent}); refusing")
        return p

    def mkdir(self, rel: str) -> None:
        parts = Path(rel.lstrip("/")).parts
        for i in range(1, len(parts) + 1):
            p = self._path(os.path.join(*parts[:i]))
            if os.path.islink(p):
                raise DmaBufError(errno.EXDEV, f"capture: {p} is a symlink; refusing to write "
                                  "through it")
            if not os.path.isdir(p):
                os.mkdir(p)

    def write(self, rel: str, data: bytes) -> None:
        p = self._path(rel)
        if os.path.lexists(p):
            raise DmaBufError(errno.EEXIST, f"capture: {p} exists already")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.result.files += 1

    def symlink(self, rel: str, target: str) -> None:
        p = self._path(rel)
        if os.path.lexists(p):
            return
        os.symlink(target, p)
        self.result.links += 1


def _read(path: str) -> bytes | None:
    """Read a regular file whole, ``None`` if missing/unreadable or not a regular file."""
    try:
        if not os.path.isfile(path) or os.path.islink(path):
            return None
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _uname_line() -> str:
    u = os.uname()
    return f"{u.sysname} {u.nodename} {u.release} {u.version} {u.machine} GNU/Linux\n"


def _check_dest(dest: Path, src: SysRoot) -> None:
    if dest.exists() or dest.is_symlink():
        if dest.is_symlink() or not dest.is_dir():
            raise DmaBufError(errno.ENOTDIR, f"{dest}: exists and is not a directory; give a new "
                              "or empty directory for the capture")
        if any(dest.iterdir()):
            raise DmaBufError(errno.EEXIST, f"{dest}: not empty; give a new or empty directory "
                              "(the capture never overwrites files)")
    real = os.path.realpath(dest)
    for sub in ("sys", "proc", "dev"):
        base = os.path.realpath(src.path / sub)
        if real == base or real.startswith(base + os.sep):
            raise DmaBufError(errno.EINVAL, f"{dest}: inside {base}; write the capture to an "
                              "ordinary directory")


def capture_root(dest: str | os.PathLike[str],
                 source: str | os.PathLike[str] = "/") -> CaptureResult:
    """Write a root laid out like ``/`` from the running machine (or re-capture a root).

    Args:
        dest: a new or empty directory (created if missing, with parents).
        source: ``/`` (default: the running machine) or another root to copy the same set from
            (a capture; its flattened links become symlinks).

    Context:
        Reads only side-effect-free sysfs/procfs files (see the module docstring); never opens
        device nodes; writes only below ``dest``.

    Returns:
        A :class:`CaptureResult`.

    Raises:
        DmaBufError(ENOENT): ``source`` has no ``sys/``. (EEXIST): ``dest`` is not empty.
            (ENOTDIR): ``dest`` is a file. (EINVAL): ``dest`` is inside the source's sys/proc/dev.
            (EXDEV): a write would leave ``dest``.

    Kernel: the files of drivers/pci/pci-sysfs.c, drivers/iommu/iommu.c, kernel/configs.c that
    shared/kernel/scripts/guest/capture-sysfs.sh copies.
    """
    src = SysRoot(source)
    d = Path(dest)
    _check_dest(d, src)
    d.mkdir(parents=True, exist_ok=True)
    res = CaptureResult(dest=str(d))
    w = _Writer(d, res)
    sroot = str(src.path)
    w.mkdir("sys/devices")
    w.mkdir("sys/bus/pci/devices")
    w.mkdir("proc")
    # 1. host bridges and PCI functions
    drivers: set[str] = set()
    devroot = os.path.join(sroot, "sys/devices")
    try:
        tops = sorted(n for n in os.listdir(devroot) if _HB_RE.match(n)
                      and os.path.isdir(os.path.join(devroot, n))
                      and not os.path.islink(os.path.join(devroot, n)))
    except OSError:
        tops = []
    for top in tops:
        w.mkdir(f"sys/devices/{top}")
        stack = [f"sys/devices/{top}"]
        while stack:
            rel = stack.pop()
            try:
                entries = sorted(os.scandir(os.path.join(sroot, rel)), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                if not _BDF_RE.match(e.name) or not e.is_dir(follow_symlinks=False):
                    continue
                frel = f"{rel}/{e.name}"
                _copy_function(src, w, frel, drivers, res)
                stack.append(frel)
    for name in sorted(drivers):
        w.mkdir(f"sys/bus/pci/drivers/{name}")
    # 2. /sys/bus/pci/devices links
    for name in src.listdir("sys/bus/pci/devices") or []:
        tgt = src.readlink(f"sys/bus/pci/devices/{name}")
        if tgt is not None and _BDF_RE.match(name):
            w.symlink(f"sys/bus/pci/devices/{name}", tgt)
    # 3. IOMMU groups
    if src.file("sys/kernel/iommu_groups").is_dir():
        w.mkdir("sys/kernel/iommu_groups")
        typed = False
        for g in src.listdir("sys/kernel/iommu_groups") or []:
            if not src.file(f"sys/kernel/iommu_groups/{g}/devices").is_dir():
                continue
            w.mkdir(f"sys/kernel/iommu_groups/{g}/devices")
            for m in src.listdir(f"sys/kernel/iommu_groups/{g}/devices") or []:
                tgt = src.readlink(f"sys/kernel/iommu_groups/{g}/devices/{m}")
                if tgt is not None:
                    w.symlink(f"sys/kernel/iommu_groups/{g}/devices/{m}", tgt)
            t = _read(str(src.file(f"sys/kernel/iommu_groups/{g}/type")))
            if t is not None:
                w.write(f"sys/kernel/iommu_groups/{g}/type", t)
                typed = True
        if typed:
            res.captured.append("sys/kernel/iommu_groups/type")
    # 4. proc files and the kernel version
    for name in ("cpuinfo", "cmdline", "config.gz"):
        data = _read(str(src.file(f"proc/{name}")))
        if data is not None:
            w.write(f"proc/{name}", data)
        elif name != "config.gz":
            res.notes.append(f"{src.file('proc/' + name)} not readable")
    if src.live:
        w.write("uname", _uname_line().encode())
        release = os.uname().release
    else:
        data = _read(str(src.file("uname")))
        if data is not None:
            w.write("uname", data)
        parts = (data or b"").decode(errors="replace").split()
        release = parts[2] if len(parts) >= 3 else ""
    _capture_extras(src, w, res, release)
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "tool": _tool_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": sroot if not src.live else "/",
        "release": release or None,
        "user": _user(src),
        "devnodes": _devnodes(src, res),
        "functions": res.functions,
    }
    res.captured = sorted(set(res.captured))
    manifest["captured"] = list(res.captured)
    w.write(MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return res


def _tool_version() -> str:
    from dmabuf import __version__

    return f"pydmabuf {__version__}"


def _copy_function(src: SysRoot, w: _Writer, rel: str, drivers: set[str],
                   res: CaptureResult) -> None:
    """One PCI function directory: attributes, p2pmem, links."""
    w.mkdir(rel)
    res.functions += 1
    base = str(src.file(rel))
    for a in ATTRS:
        data = _read(os.path.join(base, a))
        if data is not None:
            w.write(f"{rel}/{a}", data)
    if os.path.isdir(os.path.join(base, "p2pmem")) and not os.path.islink(
            os.path.join(base, "p2pmem")):
        w.mkdir(f"{rel}/p2pmem")
        for a in P2PATTRS:
            data = _read(os.path.join(base, "p2pmem", a))
            if data is not None:
                w.write(f"{rel}/p2pmem/{a}", data)
    for ln in (*_LINKS, *_EXTRA_LINKS):
        tgt = src.readlink(f"{rel}/{ln}")
        if tgt is None:
            continue
        w.symlink(f"{rel}/{ln}", tgt)
        if ln == "driver":
            name = os.path.basename(os.path.normpath(tgt))
            if name and name not in (".", ".."):
                drivers.add(name)


def _capture_extras(src: SysRoot, w: _Writer, res: CaptureResult, release: str) -> None:
    """The manifest-listed extras; each is recorded only if the source really had it to give."""

    def known(item: str) -> bool:
        return bool(src.captured(item))

    if known("proc/modules"):
        data = _read(str(src.file("proc/modules")))
        if data is not None:
            w.write("proc/modules", data)
        res.captured.append("proc/modules")   # absence recorded as a fact
    for rel in ("proc/sys/kernel/osrelease", "proc/version", "proc/driver/nvidia/version"):
        data = _read(str(src.file(rel)))
        if data is not None:
            w.mkdir(os.path.dirname(rel))
            w.write(rel, data)
    if not src.file("proc/config.gz").is_file() and release:
        rel = f"boot/config-{release}"
        data = _read(str(src.file(rel)))
        if data is not None:
            w.mkdir("boot")
            w.write(rel, data)
    if known("sys/class"):
        for cls in _CLASSES:
            names = src.listdir(f"sys/class/{cls}")
            if names is None:
                continue
            w.mkdir(f"sys/class/{cls}")
            for n in names:
                tgt = src.readlink(f"sys/class/{cls}/{n}")
                if tgt is not None:
                    w.symlink(f"sys/class/{cls}/{n}", tgt)
        for n in _MISC:
            tgt = src.readlink(f"sys/class/misc/{n}")
            if tgt is not None:
                w.mkdir("sys/class/misc")
                w.symlink(f"sys/class/misc/{n}", tgt)
        res.captured.append("sys/class")
    if known("sys/module"):
        for n in src.listdir("sys/module") or []:
            if n in RELEVANT_MODULES:
                w.mkdir(f"sys/module/{n}")
        w.mkdir("sys/module")
        res.captured.append("sys/module")
    for peer in src.listdir("sys/kernel/mm/memory_peers") or []:
        data = _read(str(src.file(f"sys/kernel/mm/memory_peers/{peer}/version")))
        if data is not None:
            w.mkdir(f"sys/kernel/mm/memory_peers/{peer}")
            w.write(f"sys/kernel/mm/memory_peers/{peer}/version", data)


def _user(src: SysRoot) -> dict[str, Any]:
    if src.live or (src.path / "dev").is_dir():
        return current_user()
    if src.manifest is not None:
        return dict(src.manifest.get("user", {}))
    return {}


def _devnodes(src: SysRoot, res: CaptureResult) -> list[dict[str, Any]]:
    """Device-node records (lstat + access), never the nodes themselves."""
    if src.live or (src.path / "dev").is_dir():
        recs = []
        for g in NODE_GROUPS:
            recs += [n.describe() for n in scan_group(str(src.path), g)]
        res.captured.append("dev")
        return recs
    if src.manifest is not None and "dev" in src.manifest.get("captured", []):
        res.captured.append("dev")
        recs2: Any = src.manifest.get("devnodes") or []
        return [dict(x) for x in recs2]
    return []
