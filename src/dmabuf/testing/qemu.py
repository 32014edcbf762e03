"""A real Linux kernel under QEMU (TCG), booted inside a test run.

Two kinds of guests serve the project's real-kernel tiers (``pytest -m qemu``):

* **The uAPI guest** — Debian's 6.12 kernel image (``linux-image-6.12.*-amd64-unsigned``, built
  with ``UDMABUF=y``, ``DMABUF_HEAPS_SYSTEM=y``, ``SYNC_FILE=y`` and ``DRM_VGEM=m``), fetched with
  ``apt-get download`` and unpacked with ``dpkg-deb -x`` (never installed), booted with a busybox
  initramfs that this module builds: the busybox of Debian's ``busybox-static`` package, the
  modules picked with ``modprobe -d TREE -S VERSION --show-depends`` (vgem and 9p over virtio)
  decompressed from ``.ko.xz``, and an ``/init`` that mounts the **host's root file system**
  read-only over 9p, bind-mounts ``/proc``, ``/sys``, ``/dev`` and debugfs into it, and
  ``chroot``\\ s there to run a command with the host's own Python — so the guest executes the
  same ``dmabuf.uapi`` code that the host imports. Results come back through a second, writable
  9p share (:func:`run_guest_python`).
* **The P2P oracle guest** — ``/work/shared/kernel/bzImage-6.12-p2pdma`` (PCI_P2PDMA, sw_sync,
  NVMe; see its README) driven by that kit's ``scripts/run-case.sh``: it boots one q35 topology,
  captures the guest's PCI sysfs and runs real O_DIRECT P2P transfers (:func:`run_p2p_case`).

Robustness contract: every boot has a wall-clock timeout (QEMU is killed, the console tail is
reported); a kernel panic, an Oops or a BUG on the console is detected and reported
(:attr:`BootResult.panic`); a missing ``qemu-system-x86_64``, a missing download tool or a
missing kit raises :class:`QemuUnavailable`, whose ``reason`` the test tier turns into a skip.

Caching: downloaded ``.deb`` files, the unpacked kernel tree (after ``depmod -b``) and every
built initramfs live in :func:`cache_dir` (``~/.cache/pydmabuf/qemu``, or
``$PYDMABUF_QEMU_CACHE``), keyed by content, so only the first run pays for the download
(~110 MB) and the unpacking; preparation holds an ``flock`` on the cache so concurrent test runs
do not race. ``.ci/install-qemu.sh`` pre-fills the same cache.

TCG, not KVM: the project's machines expose a nested ``/dev/kvm`` that cannot boot a stock
kernel (``/work/shared/specs/machine-and-real-kernel.md`` §1). TCG runs single-threaded
(``thread=single``): multi-threaded TCG crashed about one boot in fifteen in ``text_poke_bp``.
Use the guest for semantics, never for performance (numpy copies at ~0.6 GB/s there).

Kernel: nothing here models a kernel file; it runs real ones (init/initramfs.c reads the newc
cpio written by :func:`write_newc_cpio`; fs/9p serves the shares).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from dmabuf.testing.paths import shared_dir

__all__ = [
    "P2P_CASES",
    "BootResult",
    "CpioEntry",
    "DebianKernel",
    "GuestRun",
    "P2PCaseRun",
    "QemuUnavailable",
    "boot",
    "build_p2p_initrd",
    "build_uapi_initrd",
    "cache_dir",
    "find_qemu",
    "p2p_kit_dir",
    "parse_result_line",
    "prepare_debian_kernel",
    "qemu_unavailable_reason",
    "run_guest_python",
    "run_p2p_case",
    "write_newc_cpio",
]

#: The kernel package verified in machine-and-real-kernel.md §3; the newest other
#: ``linux-image-6.12.*-amd64-unsigned`` is taken when this one is not in the cache or apt.
PREFERRED_KERNEL_PACKAGE = "linux-image-6.12.107+deb12-amd64-unsigned"
#: Modules the uAPI guest loads (their dependencies are added by ``modprobe --show-depends``).
UAPI_GUEST_MODULES = ("9pnet_virtio", "9p", "vgem")
#: The cases of ``/work/shared/kernel/scripts/run-case.sh list``.
P2P_CASES = (
    "a_switch_intel",
    "b_switch_epyc",
    "d_pxb_intel",
    "e_multifunction_intel",
    "f3b_fakedsp_acs_intel",
    "g_iommu_intel",
)
_HARNESS_VERSION = "1"  # bump to invalidate cached initramfs images
_PANIC_RE = re.compile(
    r"Kernel panic - not syncing|^\s*\[[ 0-9.]+\] (?:Oops|BUG:|general protection fault)"
    r"|^(?:Oops|BUG:)",
    re.MULTILINE,
)


class QemuUnavailable(Exception):
    """The real-kernel tier cannot run here; ``reason`` says what is missing and how to fix it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# cache and tools


def cache_dir() -> Path:
    """Return the artifact cache (``$PYDMABUF_QEMU_CACHE`` or ``~/.cache/pydmabuf/qemu``).

    Returns:
        The directory (created if missing).
    """
    env = os.environ.get("PYDMABUF_QEMU_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "pydmabuf" / "qemu"
    base.mkdir(parents=True, exist_ok=True)
    return base


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the cache while preparing artifacts."""
    with open(cache / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def find_qemu() -> str | None:
    """Return the path of ``qemu-system-x86_64`` (``$PYDMABUF_QEMU`` overrides), or None."""
    env = os.environ.get("PYDMABUF_QEMU")
    if env:
        return env if os.access(env, os.X_OK) else None
    return shutil.which("qemu-system-x86_64")


def qemu_unavailable_reason() -> str | None:
    """Say why QEMU guests cannot run here, or return None when they can.

    Returns:
        None, or a sentence naming what is missing and the command that installs it.
    """
    if sys.platform != "linux":
        return f"the real-kernel tier needs Linux (this is {sys.platform})"
    if find_qemu() is None:
        return ("qemu-system-x86_64 not found: run .ci/install-qemu.sh "
                "(apt-get install qemu-system-x86 kmod)")
    return None


def _require_qemu() -> str:
    reason = qemu_unavailable_reason()
    if reason is not None:
        raise QemuUnavailable(reason)
    q = find_qemu()
    assert q is not None
    return q


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        raise QemuUnavailable(f"{name} not found: apt-get install {package} "
                              "(or run .ci/install-qemu.sh)")
    return path


def _run(cmd: Sequence[str], *, cwd: Path | None = None, timeout: float = 300,
         env: Mapping[str, str] | None = None) -> str:
    """Run a host helper command; a failure raises QemuUnavailable with its output."""
    try:
        p = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           env=dict(env) if env is not None else None, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuUnavailable(f"{cmd[0]} failed: {e}") from e
    if p.returncode != 0:
        raise QemuUnavailable(
            f"{' '.join(cmd)} exited {p.returncode}: {(p.stderr or p.stdout).strip()[-600:]}")
    return p.stdout


def _apt_download(pattern_package: str, dest: Path) -> None:
    """``apt-get download PACKAGE`` into ``dest`` (no installation)."""
    apt = shutil.which("apt-get")
    if apt is None:
        raise QemuUnavailable(f"{pattern_package} is not in {dest} and apt-get is missing: "
                              "copy the .deb there or run .ci/install-qemu.sh on a Debian host")
    cmd = [apt, "download", "-q"]
    if os.geteuid() == 0:
        cmd[2:2] = ["-o", "APT::Sandbox::User=root"]
    _run([*cmd, pattern_package], cwd=dest, timeout=600)


def _pick_kernel_package() -> str:
    """The preferred kernel package if apt knows it, else the newest 6.12 amd64 one."""
    if shutil.which("apt-cache") is None or shutil.which("apt-get") is None:
        raise QemuUnavailable("no linux-image-6.12 .deb in the cache and no apt to fetch one: "
                              "copy linux-image-6.12.*-amd64-unsigned_*.deb into "
                              f"{cache_dir() / 'debs'} or run .ci/install-qemu.sh")
    policy = subprocess.run(["apt-cache", "show", PREFERRED_KERNEL_PACKAGE],
                            capture_output=True, text=True, check=False)
    if policy.returncode == 0 and policy.stdout.strip():
        return PREFERRED_KERNEL_PACKAGE
    out = _run(["apt-cache", "search", "--names-only",
                r"^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64-unsigned$"])
    names = sorted((line.split()[0] for line in out.splitlines() if line.strip()),
                   key=_version_key)
    if not names:
        raise QemuUnavailable("apt knows no linux-image-6.12.*-amd64-unsigned package "
                              "(run apt-get update, or put the .deb into the cache's debs/)")
    return names[-1]


def _version_key(s: str) -> list[tuple[int, str]]:
    return [(int(t), "") if t.isdigit() else (-1, t) for t in re.split(r"(\d+)", s) if t]


def _find_deb(debs: Path, glob: str) -> Path | None:
    found = sorted(debs.glob(glob), key=lambda p: _version_key(p.name))
    return found[-1] if found else None


def _unpack_deb(deb: Path, dest: Path) -> Path:
    """``dpkg-deb -x`` into ``dest`` once (a ``.complete`` marker makes it idempotent)."""
    if (dest / ".complete").exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _run([_tool("dpkg-deb", "dpkg"), "-x", str(deb), str(dest)], timeout=600)
    (dest / ".complete").write_text(deb.name + "\n")
    return dest


# --------------------------------------------------------------------------------------------
# Debian kernel + busybox


@dataclasses.dataclass(frozen=True)
class DebianKernel:
    """An unpacked Debian kernel image package (after ``depmod -b``) and a static busybox."""

    version: str  #: ``uname -r`` of the guest, e.g. ``6.12.107+deb12-amd64``
    tree: Path  #: the ``dpkg-deb -x`` root (``boot/``, ``lib/modules/VERSION/``)
    vmlinuz: Path
    busybox: Path
    package: str  #: the .deb file name

    @property
    def modules_dir(self) -> Path:
        """``lib/modules/VERSION`` inside the unpacked tree."""
        return self.tree / "lib" / "modules" / self.version


def prepare_debian_kernel(*, download: bool = True) -> DebianKernel:
    """Fetch (if needed), unpack and ``depmod`` Debian's 6.12 kernel and busybox-static.

    Args:
        download: allow ``apt-get download`` when the cache lacks a ``.deb``.

    Context:
        Blocks (first run: download ~110 MB, unpack ~5 s); holds the cache lock.

    Returns:
        The prepared :class:`DebianKernel`.

    Raises:
        QemuUnavailable: a .deb is missing and cannot be downloaded, or a tool is missing.
    """
    cache = cache_dir()
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    with _cache_lock(cache):
        kdeb = _find_deb(debs, f"{PREFERRED_KERNEL_PACKAGE}_*.deb") or _find_deb(
            debs, "linux-image-6.12.*-amd64-unsigned_*.deb")
        if kdeb is None:
            if not download:
                raise QemuUnavailable(f"no linux-image-6.12 .deb in {debs}: "
                                      "run .ci/install-qemu.sh")
            _apt_download(_pick_kernel_package(), debs)
            kdeb = _find_deb(debs, "linux-image-6.12.*-amd64-unsigned_*.deb")
            if kdeb is None:
                raise QemuUnavailable(f"apt-get download left no kernel .deb in {debs}")
        bdeb = _find_deb(debs, "busybox-static_*.deb")
        if bdeb is None:
            if not download:
                raise QemuUnavailable(f"no busybox-static .deb in {debs}: "
                                      "run .ci/install-qemu.sh")
            _apt_download("busybox-static", debs)
            bdeb = _find_deb(debs, "busybox-static_*.deb")
            if bdeb is None:
                raise QemuUnavailable(f"apt-get download left no busybox-static .deb in {debs}")
        tree = _unpack_deb(kdeb, cache / "unpacked" / kdeb.stem)
        bbtree = _unpack_deb(bdeb, cache / "unpacked" / bdeb.stem)
        versions = sorted(p.name for p in (tree / "lib" / "modules").iterdir() if p.is_dir())
        if len(versions) != 1:
            raise QemuUnavailable(f"{kdeb.name}: expected one lib/modules/VERSION, "
                                  f"found {versions}")
        version = versions[0]
        vmlinuz = tree / "boot" / f"vmlinuz-{version}"
        if not vmlinuz.exists():
            raise QemuUnavailable(f"{kdeb.name} has no boot/vmlinuz-{version}")
        if not (tree / "lib" / "modules" / version / "modules.dep").exists():
            # The .deb ships no modules.dep (it is made at installation time).
            _run([_tool("depmod", "kmod"), "-b", str(tree), version])
        busybox = bbtree / "bin" / "busybox"
        if not busybox.exists():
            raise QemuUnavailable(f"{bdeb.name} has no bin/busybox")
    return DebianKernel(version=version, tree=tree, vmlinuz=vmlinuz, busybox=busybox,
                        package=kdeb.name)


def resolve_modules(kernel: DebianKernel, modules: Iterable[str]) -> list[Path]:
    """List the module files to ``insmod``, dependencies first (``modprobe --show-depends``).

    Args:
        kernel: the prepared kernel tree.
        modules: module names; built-in ones contribute nothing.

    Returns:
        Absolute ``.ko``/``.ko.xz`` paths in load order, without duplicates.

    Raises:
        QemuUnavailable: modprobe is missing or does not know a module.
    """
    modprobe = _tool("modprobe", "kmod")
    order: list[Path] = []
    for mod in modules:
        out = _run([modprobe, "-d", str(kernel.tree), "-S", kernel.version,
                    "--show-depends", mod])
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                p = Path(parts[1])
                if p not in order:
                    order.append(p)
    return order


# --------------------------------------------------------------------------------------------
# initramfs


@dataclasses.dataclass(frozen=True)
class CpioEntry:
    """One member of a newc cpio archive (``mode`` includes the file type bits)."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def write_newc_cpio(entries: Iterable[CpioEntry], out: io.BufferedIOBase | io.BytesIO) -> None:
    """Write ``entries`` as a newc ("070701") cpio archive, the initramfs format.

    Args:
        entries: members; directories must come before their contents.
        out: a binary stream.

    Kernel: init/initramfs.c (do_header(): the 110-byte ASCII header, 4-byte alignment).
    """

    def pad(n: int) -> bytes:
        return b"\0" * ((4 - n % 4) % 4)

    ino = 1
    for e in [*entries, CpioEntry("TRAILER!!!", 0)]:
        name = e.name.encode() + b"\0"
        fields = (ino, e.mode, 0, 0, 2 if (e.mode & 0o170000) == 0o040000 else 1, 0,
                  len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.write(header + name + pad(len(header) + len(name)))
        out.write(e.data + pad(len(e.data)))
        ino += 1


_UAPI_INIT = r"""#!/bin/busybox sh
# /init of the pydmabuf uAPI guest (generated by dmabuf.testing.qemu; do not edit).
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t debugfs none /sys/kernel/debug
echo "PYDMABUF_T_INIT uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
while read -r m; do
  insmod "/lib/modules/$m" || echo "PYDMABUF_INSMOD_FAILED $m"
done < /modules.load
fail() { echo "PYDMABUF_GUEST_FAILED $*"; poweroff -f; }
mkdir -p /mnt/host /mnt/results
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /mnt/results || fail results share
. /mnt/results/guest-env.sh || fail guest-env.sh
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /mnt/host \
  || fail host root share
H=/mnt/host
# The host's /tmp stays visible (read-only): the checkout and its venv may live there (CI clones
# into a temporary directory). Scratch space is a tmpfs at /dev/shm, named by TMPDIR.
for d in proc sys dev; do mount --bind /$d $H/$d || fail bind /$d; done
mkdir -p $H/dev/shm && mount -t tmpfs shm $H/dev/shm || fail tmpfs
mount --bind /sys/kernel/debug $H/sys/kernel/debug || fail bind debugfs
mkdir -p "$H$PYDMABUF_RESULTS" 2>/dev/null
mount --bind /mnt/results "$H$PYDMABUF_RESULTS" || fail bind results
echo "PYDMABUF_T_CHROOT uptime=$(cut -d' ' -f1 /proc/uptime)"
TMPDIR=/dev/shm chroot $H /bin/sh "$PYDMABUF_RESULTS/guest-cmd.sh"
rc=$?
echo "$rc" > /mnt/results/guest-exit-code
echo "PYDMABUF_T_DONE uptime=$(cut -d' ' -f1 /proc/uptime) rc=$rc"
umount "$H$PYDMABUF_RESULTS"; sync; umount /mnt/results
poweroff -f
"""


def build_uapi_initrd(kernel: DebianKernel, modules: Sequence[str] = UAPI_GUEST_MODULES) -> Path:
    """Build (or reuse from the cache) the uAPI guest's initramfs.

    Args:
        kernel: the prepared Debian kernel (modules come from its tree, xz-decompressed).
        modules: module names to load at boot, with dependencies.

    Context:
        Blocks (~2 s the first time); holds the cache lock.

    Returns:
        Path of the gzip-compressed newc initramfs in the cache.

    Raises:
        QemuUnavailable: modprobe/depmod missing or a module unknown.
    """
    cache = cache_dir()
    files = resolve_modules(kernel, modules)
    key = hashlib.sha256("\n".join(
        [_HARNESS_VERSION, kernel.package, str(kernel.busybox), _UAPI_INIT,
         *map(str, files)]).encode()).hexdigest()[:16]
    out = cache / f"initrd-uapi-{key}.gz"
    with _cache_lock(cache):
        if out.exists():
            return out
        mdir = kernel.modules_dir
        entries = [CpioEntry(d, 0o040755) for d in
                   ("bin", "dev", "proc", "sys", "tmp", "mnt", "lib", "lib/modules")]
        entries.append(CpioEntry("dev/console", 0o020600, rdev=(5, 1)))
        entries.append(CpioEntry("bin/busybox", 0o100755, kernel.busybox.read_bytes()))
        entries.append(CpioEntry("init", 0o100755, _UAPI_INIT.encode()))
        dirs: set[str] = {"lib/modules"}
        load: list[str] = []
        for f in files:
            rel = f.relative_to(mdir).as_posix()
            data = f.read_bytes()
            if rel.endswith(".xz"):
                rel, data = rel[:-3], lzma.decompress(data)
            elif rel.endswith(".zst"):
                raise QemuUnavailable(f"{f.name}: zstd-compressed modules are not supported")
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "lib/modules/" + "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    entries.append(CpioEntry(d, 0o040755))
            entries.append(CpioEntry("lib/modules/" + rel, 0o100644, data))
            load.append(rel)
        entries.append(CpioEntry("modules.load", 0o100644, ("\n".join(load) + "\n").encode()))
        raw = io.BytesIO()
        write_newc_cpio(entries, raw)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(raw.getvalue(), compresslevel=1))
        tmp.replace(out)
    return out


# --------------------------------------------------------------------------------------------
# booting


@dataclasses.dataclass
class BootResult:
    """What one QEMU boot produced."""

    command: list[str]
    console: str  #: everything the guest wrote to ttyS0 (and QEMU to stderr)
    returncode: int | None  #: QEMU's exit status (None when it was killed on timeout)
    wall_s: float
    timed_out: bool
    panic: str | None  #: the first panic/Oops/BUG line, if any

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` console lines (for failure messages)."""
        return "\n".join(self.console.splitlines()[-lines:])

    def marks(self) -> dict[str, float]:
        """Guest uptimes of ``PYDMABUF_T_<NAME> uptime=S`` (and kit ``T_<NAME>``) lines."""
        return {m.group(1): float(m.group(2)) for m in
                re.finditer(r"T_([A-Z]+) uptime=([0-9.]+)", self.console)}


def boot(kernel_image: Path, initrd: Path, *, append: str = "", extra_args: Sequence[str] = (),
         cpu: str = "max", smp: int = 2, memory_mb: int = 1024, machine: str | None = None,
         timeout: float = 120.0, console_log: Path | None = None) -> BootResult:
    """Boot ``kernel_image`` under QEMU TCG until the guest powers off (or the timeout).

    Args:
        kernel_image: the bzImage/vmlinuz.
        initrd: the initramfs.
        append: extra kernel command-line words (``console=ttyS0 panic=-1 quiet`` come first;
            ``panic=-1`` reboots at once on a panic, which ``-no-reboot`` turns into an exit).
        extra_args: more QEMU arguments (shares, devices).
        cpu, smp, memory_mb, machine: the emulated machine.
        timeout: wall-clock seconds before QEMU is killed.
        console_log: also write the console there.

    Context:
        Blocks for the whole boot.

    Returns:
        A :class:`BootResult`; a timeout or a panic is reported in it, not raised.

    Raises:
        QemuUnavailable: qemu-system-x86_64 is missing.
    """
    qemu = _require_qemu()
    cmd = [qemu, "-accel", "tcg,thread=single", "-cpu", cpu, "-m", str(memory_mb),
           "-smp", str(smp), "-nographic", "-no-reboot", "-net", "none", "-vga", "none"]
    if machine:
        cmd += ["-machine", machine]
    cmd += [*extra_args, "-kernel", str(kernel_image), "-initrd", str(initrd),
            "-append", f"console=ttyS0 panic=-1 quiet {append}".strip()]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    wall = time.monotonic() - t0
    console = out.decode("utf-8", "replace").replace("\r\n", "\n")
    if console_log is not None:
        console_log.write_text(console)
    m = _PANIC_RE.search(console)
    panic = None
    if m:
        start = console.rfind("\n", 0, m.start()) + 1
        end = console.find("\n", m.end())
        panic = console[start:end if end >= 0 else None].strip()
    return BootResult(command=cmd, console=console,
                      returncode=None if timed_out else proc.returncode, wall_s=wall,
                      timed_out=timed_out, panic=panic)


@dataclasses.dataclass
class GuestRun:
    """One command run with the host's Python inside the uAPI guest."""

    boot: BootResult
    results_dir: Path
    exit_code: int | None  #: the command's exit status in the guest (None: it never finished)
    kernel: DebianKernel

    @property
    def ok(self) -> bool:
        """True when the guest ran the command to completion (whatever its exit status)."""
        return self.exit_code is not None and self.boot.panic is None

    def failure(self) -> str:
        """A one-paragraph explanation of why the run did not complete."""
        if self.boot.panic:
            why = f"guest kernel panic: {self.boot.panic}"
        elif self.boot.timed_out:
            why = f"guest did not power off within the timeout ({self.boot.wall_s:.0f} s)"
        elif "PYDMABUF_GUEST_FAILED" in self.boot.console:
            line = next(ln for ln in self.boot.console.splitlines()
                        if "PYDMABUF_GUEST_FAILED" in ln)
            why = f"guest setup failed: {line}"
        else:
            why = f"guest exited without a result (qemu rc {self.boot.returncode})"
        return f"{why}\n--- console tail ---\n{self.boot.tail()}"


def run_guest_python(argv: Sequence[str], results_dir: Path, *, timeout: float = 150.0,
                     env: Mapping[str, str] | None = None, python: str | None = None,
                     memory_mb: int = 1024) -> GuestRun:
    """Boot the uAPI guest and run ``python ARGV…`` there with the host's Python, as root.

    The host's ``/`` is the guest's root (read-only, over 9p); ``results_dir`` (a host
    directory) is writable at the same path inside the guest, so the command writes its
    results (JSON) there. The host's ``/tmp`` is visible read-only (a checkout may live
    there); scratch space is a private tmpfs at ``/dev/shm`` (``TMPDIR`` and ``HOME``).

    Args:
        argv: arguments after the interpreter (a script path and its arguments).
        results_dir: an existing host directory for results; also receives ``console.log``.
        timeout: wall-clock seconds for the whole boot.
        env: extra environment variables for the command.
        python: interpreter path (default ``sys.executable``).
        memory_mb: guest RAM.

    Context:
        Blocks (≈10 s: boot ≈3.5 s, Python start-up over 9p, the command).

    Returns:
        A :class:`GuestRun`.

    Raises:
        QemuUnavailable: QEMU, the kernel package or a tool is missing.
    """
    _require_qemu()
    kernel = prepare_debian_kernel()
    initrd = build_uapi_initrd(kernel)
    results_dir = results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("guest-exit-code",):
        (results_dir / stale).unlink(missing_ok=True)
    py = python or sys.executable
    full_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/dev/shm", "TMPDIR": "/dev/shm",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
                "LANG": "C.UTF-8", "PYDMABUF_IN_GUEST": "1", **(env or {})}
    (results_dir / "guest-env.sh").write_text(f"PYDMABUF_RESULTS={_shq(str(results_dir))}\n")
    exports = "".join(f"export {k}={_shq(v)}\n" for k, v in full_env.items())
    (results_dir / "guest-cmd.sh").write_text(
        f"cd {_shq(str(results_dir))}\n{exports}"
        f"exec {_shq(py)} {' '.join(_shq(a) for a in argv)}\n")
    shares = [
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
        "multidevs=remap",
        "-virtfs", f"local,path={results_dir},mount_tag=results,security_model=none,"
        "multidevs=remap",
    ]
    result = boot(kernel.vmlinuz, initrd, extra_args=shares, timeout=timeout,
                  memory_mb=memory_mb, console_log=results_dir / "console.log")
    code_file = results_dir / "guest-exit-code"
    code = int(code_file.read_text().strip()) if code_file.exists() else None
    return GuestRun(boot=result, results_dir=results_dir, exit_code=code, kernel=kernel)


def _shq(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


# --------------------------------------------------------------------------------------------
# P2P oracle kit (/work/shared/kernel)


def p2p_kit_dir() -> Path:
    """The P2PDMA kernel kit (``$PYDMABUF_P2P_KIT`` or ``/work/shared/kernel``)."""
    return Path(os.environ.get("PYDMABUF_P2P_KIT", str(shared_dir() / "kernel")))


@dataclasses.dataclass
class P2PCaseRun:
    """The outcome of one ``run-case.sh CASE``."""

    case: str
    share: Path  #: the run's 9p share (root.tar, results.txt, dmesg-*.txt, done)
    root: Path  #: the extracted sysfs capture, laid out like ``/``
    results: list[dict[str, str | int]]  #: one parsed ``RESULT`` line per provider x client
    providers: list[dict[str, str | int]]  #: parsed ``provider BDF size=… …`` lines
    dmesg: dict[tuple[str, str], str]  #: (provider, client) -> the kernel log of that pair
    console: str
    cpu: str
    wall_s: float
    marks: dict[str, float]


def parse_result_line(line: str) -> dict[str, str | int]:
    """Parse ``RESULT k=v k=v …`` (p2p_pair's output) into a dict; integers become int.

    Args:
        line: one line starting with ``RESULT`` (or ``provider``).

    Returns:
        The key/value pairs.

    Raises:
        ValueError: the line is not of that form.
    """
    words = line.split()
    if not words or words[0] not in ("RESULT", "provider"):
        raise ValueError(f"not a RESULT/provider line: {line!r}")
    out: dict[str, str | int] = {}
    if words[0] == "provider" and len(words) > 1:
        out["provider"] = words[1]
        words = words[1:]
    for w in words[1:]:
        k, sep, v = w.partition("=")
        if not sep:
            raise ValueError(f"word {w!r} of {line!r} is not key=value")
        out[k] = int(v) if re.fullmatch(r"-?\d+", v) else v
    return out


def build_p2p_initrd(kit: Path) -> Path:
    """Build the kit's oracle initramfs once (``scripts/make-initrd.sh``), cached by content."""
    scripts = kit / "scripts"
    h = hashlib.sha256(_HARNESS_VERSION.encode())
    for f in sorted(p for p in scripts.rglob("*") if p.is_file()):
        h.update(f.relative_to(scripts).as_posix().encode() + b"\0" + f.read_bytes())
    cache = cache_dir()
    out = cache / f"initrd-p2p-{h.hexdigest()[:16]}.gz"
    if out.exists():
        return out
    if shutil.which("gcc") is None or not any(
            Path(p).exists() for p in ("/usr/lib/x86_64-linux-gnu/libc.a", "/usr/lib64/libc.a",
                                       "/usr/lib/libc.a")):
        raise QemuUnavailable("building the P2P oracle initramfs needs gcc and a static glibc "
                              "(apt-get install gcc libc6-dev, or run .ci/install-qemu.sh)")
    _tool("cpio", "cpio")
    kernel = prepare_debian_kernel()  # for its busybox (and the shared cache)
    with _cache_lock(cache):
        if out.exists():
            return out
        tmp = out.with_suffix(".tmp")
        _run(["sh", str(scripts / "make-initrd.sh"), str(tmp)],
             env={**os.environ, "BUSYBOX": str(kernel.busybox)}, timeout=300)
        if tmp.stat().st_size < 100_000:  # the script pipes cpio into gzip: errors vanish
            tmp.unlink()
            raise QemuUnavailable(f"{scripts / 'make-initrd.sh'} produced an almost empty "
                                  "initramfs (is cpio installed?)")
        tmp.replace(out)
    return out


def run_p2p_case(case: str, out_dir: Path, *, timeout: float = 120.0) -> P2PCaseRun:
    """Run one topology of the P2P oracle kit into ``out_dir`` and parse what it captured.

    The kit's scripts are copied into ``out_dir/kit/scripts`` (the kit itself is read-only and
    ``run-case.sh`` writes next to its scripts); ``KERNEL`` and ``INITRD`` point at the kit's
    bzImage and the cached initramfs. The capture (``root.tar``) is extracted into
    ``out_dir/capture`` and the returned ``root`` is its ``root/`` folder, laid out like ``/``.

    Args:
        case: one of :data:`P2P_CASES`.
        out_dir: an empty or new directory.
        timeout: wall-clock seconds for ``run-case.sh`` (its QEMU retries included).

    Context:
        Blocks (4–10 s per boot under TCG).

    Returns:
        A :class:`P2PCaseRun`.

    Raises:
        QemuUnavailable: QEMU, the kit or the initramfs build tools are missing.
        RuntimeError: the case ran but produced no capture (console tail in the message).
        ValueError: an unknown case.
    """
    if case not in P2P_CASES:
        raise ValueError(f"unknown P2P case {case!r}; known: {', '.join(P2P_CASES)}")
    _require_qemu()
    kit = p2p_kit_dir()
    image = kit / "bzImage-6.12-p2pdma"
    if not (image.exists() and (kit / "scripts" / "run-case.sh").exists()):
        raise QemuUnavailable(f"P2P oracle kit not found at {kit} (set PYDMABUF_P2P_KIT)")
    initrd = build_p2p_initrd(kit)
    out_dir = out_dir.resolve()
    work = out_dir / "kit"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(kit / "scripts", work / "scripts")
    for p in (work / "scripts").rglob("*"):
        p.chmod(0o755 if p.is_dir() or os.access(p, os.X_OK) else 0o644)
    env = {**os.environ, "KERNEL": str(image), "INITRD": str(initrd)}
    qemu_dir = str(Path(_require_qemu()).parent)
    env["PATH"] = qemu_dir + os.pathsep + env.get("PATH", "")
    t0 = time.monotonic()
    proc = subprocess.Popen(["sh", str(work / "scripts" / "run-case.sh"), case], cwd=out_dir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate(timeout=30)
    wall = time.monotonic() - t0
    run = work / "run" / "runs" / case
    share = run / "share"
    console = (run / "console.log").read_text("utf-8", "replace") if (
        run / "console.log").exists() else ""
    if not (share / "done").exists() or not (share / "root.tar").exists():
        tail = "\n".join(console.splitlines()[-25:])
        raise RuntimeError(f"P2P case {case} produced no capture after {wall:.0f} s "
                           f"(run-case.sh rc {proc.returncode}):\n"
                           f"{log.decode('utf-8', 'replace')[-1500:]}\n--- console ---\n{tail}")
    capture = out_dir / "capture"
    if capture.exists():
        shutil.rmtree(capture)
    capture.mkdir()
    with tarfile.open(share / "root.tar") as tf:
        tf.extractall(capture, filter="tar")
    results = [parse_result_line(ln) for ln in
               (share / "results.txt").read_text().splitlines() if ln.startswith("RESULT")] \
        if (share / "results.txt").exists() else []
    providers = [parse_result_line(ln) for ln in
                 (share / "providers.txt").read_text().splitlines()
                 if ln.startswith("provider")] if (share / "providers.txt").exists() else []
    dmesg: dict[tuple[str, str], str] = {}
    for f in share.glob("dmesg-pair-*.txt"):
        m = re.fullmatch(r"dmesg-pair-(.+:.+\.[0-7])-(.*)\.txt", f.name)
        if m:
            dmesg[(m.group(1), m.group(2))] = f.read_text("utf-8", "replace")
    cpu = (run / "cpu").read_text().strip() if (run / "cpu").exists() else ""
    marks = {m.group(1): float(m.group(2))
             for m in re.finditer(r"T_([A-Z]+) uptime=([0-9.]+)", console)}
    return P2PCaseRun(case=case, share=share, root=capture / "root", results=results,
                      providers=providers, dmesg=dmesg, console=console, cpu=cpu, wall_s=wall,
                      marks=marks)
